"""The release this code belongs to: the installed distribution's version.

The agent announces it in ``hello`` (the relay records it per device) and every command
line prints it for ``--version``, so one lookup serves both. A source checkout that was
never installed has no distribution metadata and says so rather than inventing a release.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "outlink"
#: What a checkout without installed metadata reports (PEP 440: a local version of 0.0.0).
UNINSTALLED = "0.0.0+source"


def _installed_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNINSTALLED


VERSION = _installed_version()
