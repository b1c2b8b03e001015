"""Shared test settings: one time unit that slow machines can scale, and the PKI fixtures."""

from __future__ import annotations

import os

pytest_plugins = ["tests.pki_fixtures"]

UNIT = float(os.environ.get("OUTLINK_TEST_UNIT", "1.0"))
