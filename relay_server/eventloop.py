"""An event loop whose TLS connections share one receive buffer and keep less state.

asyncio's `SSLProtocol` gives every TLS connection its own 256 KiB receive buffer
(`bytearray(256 * 1024)`, zero-filled, so it is resident): 10,000 idle agents would
cost 2.5 GiB before they send a byte, against a budget of 64 KiB per agent.

The buffer is only used between `get_buffer()` and `buffer_updated()`, which the
selector transport calls back to back, synchronously (`recv_into` in between), and
`buffer_updated` copies the bytes into the connection's own `MemoryBIO` at once. So one
buffer per loop serves every connection safely. This module makes the relay's loop
create TLS transports with such a protocol. It touches one private hook of
`asyncio.selector_events` (`_make_ssl_transport`); if that hook ever changes shape,
`RelayEventLoop` falls back to the stock behaviour (correct, just hungrier).

It also stops each connection from keeping its decoded peer certificate: the relay
reads it once per handshake, so it is decoded on request instead. And it tells the
connection when its TLS handshake failed (`HandshakeObserver`): asyncio itself only
closes the socket, so a refused client certificate would leave no trace.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import sslproto
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

# One receive buffer per loop, as large as asyncio's default, so throughput per read
# is unchanged.
SHARED_RECEIVE_BUFFER = 256 * 1024
# Size of the throwaway receive buffer the base class allocates in __init__ (replaced by
# the shared one at once): small, so a burst of handshakes does not zero-fill 256 KiB each.
THROWAWAY_BUFFER = 17 * 1024
# Largest plaintext read from the TLS object at a time, asyncio's default. Reads of one
# record (16 KiB) cost a bulk forward ~7 % of its throughput in Python calls and joins.
TLS_READ_SIZE = 256 * 1024


@runtime_checkable
class HandshakeObserver(Protocol):
    """An application protocol that wants to hear of its failed TLS handshake."""

    def tls_failed(self, exc: BaseException, peername: Any, sockname: Any) -> None:
        """Called once, instead of `connection_made`; must not raise."""


class SharedBufferSSLProtocol(sslproto.SSLProtocol):
    """SSLProtocol that receives into the loop-wide buffer instead of its own."""

    max_size = THROWAWAY_BUFFER

    def __init__(self, loop: asyncio.AbstractEventLoop, *args: Any, **kwargs: Any) -> None:
        super().__init__(loop, *args, **kwargs)
        # From now on only the read size. typeshed calls max_size a ClassVar; asyncio
        # reads it through the instance, which is what lets the two sizes differ.
        self.max_size = TLS_READ_SIZE  # type: ignore[misc]
        shared: bytearray = loop._outlink_tls_buffer  # type: ignore[attr-defined]
        self._ssl_buffer = shared
        self._ssl_buffer_view = memoryview(shared)

    def get_buffer(self, n: int) -> memoryview:
        return self._ssl_buffer_view

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        app = self._app_protocol
        transport = self._transport
        super()._on_handshake_complete(handshake_exc)
        if handshake_exc is not None and isinstance(app, HandshakeObserver):
            app.tls_failed(
                handshake_exc,
                transport.get_extra_info("peername") if transport is not None else None,
                transport.get_extra_info("sockname") if transport is not None else None,
            )
        # The decoded peer certificate (~2 KiB of dicts and tuples) is read once, in
        # process_request; build it on demand instead of keeping it per connection.
        self._extra.pop("peercert", None)

    def _get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peercert":
            sslobj = self._extra.get("ssl_object")
            return sslobj.getpeercert() if sslobj is not None else default
        return super()._get_extra_info(name, default)


class RelayEventLoop(asyncio.SelectorEventLoop):
    """A selector loop with `SharedBufferSSLProtocol` for TLS transports."""

    def __init__(self) -> None:
        super().__init__()
        self._outlink_tls_buffer = bytearray(SHARED_RECEIVE_BUFFER)

    def _make_ssl_transport(
        self,
        rawsock: Any,
        protocol: Any,
        sslcontext: Any,
        waiter: Any = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: Any = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> Any:
        ssl_protocol = SharedBufferSSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        _SelectorSocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport


def _transport_class() -> Any:
    from asyncio import selector_events

    return getattr(selector_events, "_SelectorSocketTransport", None)


_SelectorSocketTransport = _transport_class()

if _SelectorSocketTransport is None or not hasattr(
    asyncio.SelectorEventLoop, "_make_ssl_transport"
):  # pragma: no cover - a future Python changed the hook; keep the stock loop
    log.warning("= asyncio internals changed; TLS connections keep per-connection buffers")
    del RelayEventLoop._make_ssl_transport


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop the relay runs on (pass as `loop_factory` to `asyncio.Runner`)."""
    return RelayEventLoop()
