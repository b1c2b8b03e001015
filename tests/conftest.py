"""Shared test settings: one time unit that slow machines can scale."""

from __future__ import annotations

import os

UNIT = float(os.environ.get("OUTLINK_TEST_UNIT", "1.0"))
