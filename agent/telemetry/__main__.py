"""``python -m agent.telemetry run|audit``: see `agent.telemetry.cli`."""

from __future__ import annotations

import sys

from agent.telemetry.cli import main

sys.exit(main())
