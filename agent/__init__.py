"""The Outlink agent: dials out to a relay and keeps one verified tunnel up (R11, R19, R24)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("outlink")
except PackageNotFoundError:  # running from a source checkout that was never installed
    __version__ = "0.0.0+source"
