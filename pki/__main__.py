"""``python -m pki`` is ``outlink-pki``."""

from __future__ import annotations

import sys

from pki.cli import main

sys.exit(main())
