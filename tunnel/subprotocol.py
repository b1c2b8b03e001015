"""Version negotiation through the WebSocket subprotocol, shared by relay and agent.

The client offers every version it speaks (:data:`SUBPROTOCOLS`); the server picks
the highest version it also knows; no common version means the handshake is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

SUBPROTOCOL_V1: Final = "outlink.tunnel.v1"

SUBPROTOCOLS: Final[tuple[str, ...]] = (SUBPROTOCOL_V1,)
"""Versions this code speaks, newest first: what a client offers."""

_VERSION: Final = re.compile(r"outlink\.tunnel\.v([1-9][0-9]{0,3})")


def select_subprotocol(offered: Iterable[str]) -> str | None:
    """The highest version in ``offered`` that we speak, or ``None`` (refuse)."""
    best: tuple[int, str] | None = None
    for name in offered:
        match = _VERSION.fullmatch(name)
        if match is not None and name in SUBPROTOCOLS:
            version = int(match.group(1))
            if best is None or version > best[0]:
                best = (version, name)
    return best[1] if best is not None else None
