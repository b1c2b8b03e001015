"""asyncio adapter: the tunnel over a ``websockets.asyncio`` connection.

::

    tunnel = Tunnel(ws, role=Role.CLIENT, settings=Settings(), on_open=handler, name=device)
    runner = asyncio.create_task(tunnel.run())
    ch = await tunnel.open_channel("telemetry", meta={...})
    await ch.send(b"...")
    reply = await ch.recv()
"""

from __future__ import annotations

from .channel import Channel, IncomingChannel
from .exceptions import ChannelError, ChannelRefusedError, ChannelResetError, TunnelClosedError
from .forward import Forward
from .negotiation import select_subprotocol, websocket_options
from .tunnel import OpenHandler, Tunnel, close_code_for

__all__ = [
    "Channel",
    "ChannelError",
    "ChannelRefusedError",
    "ChannelResetError",
    "Forward",
    "IncomingChannel",
    "OpenHandler",
    "Tunnel",
    "TunnelClosedError",
    "close_code_for",
    "select_subprotocol",
    "websocket_options",
]
