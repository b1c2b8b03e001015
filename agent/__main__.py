"""``python -m agent``: same as the ``outlink-agent`` console script."""

from __future__ import annotations

import sys

from agent.cli import main

sys.exit(main())
