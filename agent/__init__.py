"""The Outlink agent: dials out to a relay and keeps one verified tunnel up (R11, R19, R24)."""

from __future__ import annotations

from release import VERSION as __version__

__all__ = ["__version__"]
