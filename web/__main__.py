"""``python -m web <command>``: the portal's operator commands (see :mod:`web.cli`)."""

from __future__ import annotations

from web.cli import outlink

if __name__ == "__main__":
    outlink(prog_name="python -m web")
