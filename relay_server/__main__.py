"""`python -m relay_server` runs the relay (see `relay_server.cli`)."""

from __future__ import annotations

import sys

from relay_server.cli import main

sys.exit(main())
