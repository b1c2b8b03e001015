"""``python -m sim``: see `sim.device`."""

from __future__ import annotations

import sys

from sim.device import main

sys.exit(main())
