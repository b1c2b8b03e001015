"""`RelayConnection`: every TLS connection a relay port accepts, counted for the limits.

websockets builds connection objects itself (``create_connection=``), so what a
connection needs of its relay -- the counters and the per-source limiter -- is bound
into a per-relay subclass by `connection_class`. The fleet port and feature ports (the
desktop viewer's) share one class, so one source's connections count together.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection

from pki.identity import Identity
from relay_server.limits import SourceLimiter
from relay_server.metrics import RelayStats


class RelayConnection(ServerConnection):
    """A TLS connection to the relay: counts itself for limits, carries its identity.

    Use a subclass made by `connection_class`: `stats` and `limiter` are set there.
    """

    stats: ClassVar[RelayStats]
    limiter: ClassVar[SourceLimiter]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # at TCP accept, before TLS
        self.identity: Identity | None = None
        self.source = ""
        self.peer = ""
        self.stats.tcp_accepted += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # TLS is established now
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.source = str(peername[0])
            self.peer = f"{peername[0]}:{peername[1]}"
        else:
            self.source = self.peer = str(peername)
        self.stats.tls_established += 1
        self.limiter.opened(self.source, time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.limiter.closed(self.source)


def connection_class(stats: RelayStats, limiter: SourceLimiter) -> type[RelayConnection]:
    """The connection factory of one relay (pass it as ``create_connection=``)."""
    return type("RelayConnection", (RelayConnection,), {"stats": stats, "limiter": limiter})
