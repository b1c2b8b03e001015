"""What a ``websockets`` server or client needs to carry the tunnel.

Server::

    serve(handler, host, port, subprotocols=list(SUBPROTOCOLS),
          select_subprotocol=select_subprotocol, **websocket_options())

Client::

    connect(uri, subprotocols=list(SUBPROTOCOLS), **websocket_options())
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import NegotiationError
from websockets.typing import Subprotocol

from .. import subprotocol
from ..limits import MAX_FRAME_SIZE


def select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """``select_subprotocol`` callback for ``serve()``: highest common tunnel version,
    else the handshake fails with HTTP 400. (A server that also serves other
    subprotocols on other paths wraps :func:`tunnel.select_subprotocol` itself.)"""
    chosen = subprotocol.select_subprotocol(offered)
    if chosen is None:
        raise NegotiationError("no common tunnel protocol version")
    return Subprotocol(chosen)


def websocket_options() -> dict[str, Any]:
    """Keyword arguments for ``serve()``/``connect()`` that the tunnel relies on.

    * ``max_size``: one frame per message, so nothing larger is legitimate;
    * ``compression=None``: payloads are mostly compressed images/already small,
      and deflate would cost CPU and memory per connection;
    * ``ping_interval=None``: the tunnel runs its own keepalive (PING/PONG frames
      with dead-peer detection on both ends); a second one only costs traffic.
    """
    return {"max_size": MAX_FRAME_SIZE, "compression": None, "ping_interval": None}
