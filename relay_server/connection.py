"""`RelayConnection`: every TLS connection a relay port accepts, counted for the limits.

websockets builds connection objects itself (``create_connection=``), so what a
connection needs of its relay -- the counters, the per-source limiter and the refusal
log -- is bound into a per-relay subclass by `connection_class`. The fleet port and
feature ports (the desktop viewer's) share one class, so one source's connections count
together, and a failed TLS handshake on any of them is recorded (`tls_failed`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection

from pki.identity import Identity
from relay_server.limits import SourceLimiter
from relay_server.metrics import RelayStats
from relay_server.refusals import AUDIT_KIND, CERTIFICATE_REASONS, RefusalLog, tls_reason


class RelayConnection(ServerConnection):
    """A TLS connection to the relay: counts itself for limits, carries its identity.

    Use a subclass made by `connection_class`: `stats`, `limiter` and `refusals` are
    set there.
    """

    stats: ClassVar[RelayStats]
    limiter: ClassVar[SourceLimiter]
    refusals: ClassVar[RefusalLog]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # at TCP accept, before TLS
        self.identity: Identity | None = None
        self.source = ""
        self.peer = ""
        self.stats.tcp_accepted += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # TLS is established now
        self.source, self.peer = _addresses(transport.get_extra_info("peername"))
        self.stats.tls_established += 1
        self.limiter.opened(self.source, time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.limiter.closed(self.source)

    def tls_failed(self, exc: BaseException, peername: Any, sockname: Any) -> None:
        """The TLS handshake failed (instead of `connection_made`): record a refusal.

        Called by the relay's event loop (`eventloop.SharedBufferSSLProtocol`), the
        only place that sees the exception. No HTTP request was read, so the endpoint
        is unknown; the local port tells the fleet port from a feature's.
        """
        found = tls_reason(exc)
        if found is None:
            return
        reason, details = found
        source, peer = _addresses(peername)
        port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
        self.refusals.refused(
            reason,
            time.monotonic(),
            source=source,
            peer=peer,
            endpoint="tls",
            audit_kind=AUDIT_KIND if reason in CERTIFICATE_REASONS else None,
            port=port,
            **details,
        )


def _addresses(peername: Any) -> tuple[str, str]:
    """(source address, "address:port") of a transport's ``peername``."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return str(peername[0]), f"{peername[0]}:{peername[1]}"
    return str(peername), str(peername)


def connection_class(
    stats: RelayStats, limiter: SourceLimiter, refusals: RefusalLog
) -> type[RelayConnection]:
    """The connection factory of one relay (pass it as ``create_connection=``)."""
    return type(
        "RelayConnection",
        (RelayConnection,),
        {"stats": stats, "limiter": limiter, "refusals": refusals},
    )
