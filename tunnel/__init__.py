"""Outlink's multiplexing tunnel protocol: a sans-I/O core.

``tunnel`` holds the protocol (frames, channel state machine, flow control,
priorities, keepalive) with no I/O, loop or clock; ``tunnel.aio`` adapts it to a
``websockets.asyncio`` connection. The specification is ``docs/tunnel-protocol.md``.
"""

from __future__ import annotations

from .connection import Connection
from .errors import ErrorCode, FrameError, LocalProtocolError, TunnelError
from .events import (
    ChannelAccepted,
    ChannelEnded,
    ChannelRefused,
    ChannelRequested,
    ChannelReset,
    ChunkReceived,
    ConnectionFailed,
    Event,
    GoAwayReceived,
    MessageReceived,
)
from .limits import MAX_FRAME_SIZE
from .scheduler import Priority, priority_for_kind
from .settings import Role, Settings
from .stats import KindStats
from .subprotocol import SUBPROTOCOLS, select_subprotocol

__all__ = [
    "MAX_FRAME_SIZE",
    "SUBPROTOCOLS",
    "ChannelAccepted",
    "ChannelEnded",
    "ChannelRefused",
    "ChannelRequested",
    "ChannelReset",
    "ChunkReceived",
    "Connection",
    "ConnectionFailed",
    "ErrorCode",
    "Event",
    "FrameError",
    "GoAwayReceived",
    "KindStats",
    "LocalProtocolError",
    "MessageReceived",
    "Priority",
    "Role",
    "Settings",
    "TunnelError",
    "priority_for_kind",
    "select_subprotocol",
]
