"""What :class:`~tunnel.connection.Connection` reports to its adapter.

``receive_message()`` and ``tick()`` return lists of these. Events about a
channel always carry its id; once a channel is reset, refused or failed, no
further event mentions it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode


class Event:
    """Base class of all events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ChannelRequested(Event):
    """The peer opened a channel. Answer with ``accept()`` or ``refuse()`` within
    ``Settings.accept_timeout`` or the core refuses it with TIMEOUT."""

    channel_id: int
    kind: str
    meta: dict[str, Any]  # the OPEN metadata without "kind"


@dataclass(frozen=True, slots=True)
class ChannelAccepted(Event):
    """Our OPEN was accepted; the channel is open for sending and receiving."""

    channel_id: int
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChannelRefused(Event):
    """Our OPEN was refused by the peer, or timed out here (code TIMEOUT)."""

    channel_id: int
    code: ErrorCode
    reason: str


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """One whole message. Call ``message_consumed(channel_id, len(data))`` once the
    application has taken it: that is what returns credit to the sender."""

    channel_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChunkReceived(Event):
    """One DATA chunk of a channel in chunk mode (``Connection.receive_in_chunks``):
    ``more`` = the message continues. ``data`` is a read-only view of the received
    frame. Call ``message_consumed(channel_id, len(data))`` once it has been passed on:
    that returns credit to the sender, as for whole messages."""

    channel_id: int
    data: memoryview
    more: bool


@dataclass(frozen=True, slots=True)
class ChannelEnded(Event):
    """The peer half-closed: no more messages will arrive on this channel."""

    channel_id: int


@dataclass(frozen=True, slots=True)
class ChannelReset(Event):
    """The channel is gone. ``remote`` = the peer reset it; otherwise the core did,
    because the peer broke a channel rule (the peer was told with ``code``) or an
    incoming OPEN was not answered in time (TIMEOUT)."""

    channel_id: int
    code: ErrorCode
    reason: str
    remote: bool


@dataclass(frozen=True, slots=True)
class GoAwayReceived(Event):
    """The peer takes no new channels; open new ones on a new connection after
    ``retry_after_ms``. Existing channels keep working until the connection closes."""

    code: ErrorCode
    retry_after_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionFailed(Event):
    """The connection is unusable (bad input from the peer, or dead peer: TIMEOUT).

    Every channel is gone. The core has queued a final GOAWAY carrying ``code``:
    write what ``next_frame()`` still returns, then close the transport.
    ``reason`` is for local logs; the peer only sees the code.
    """

    code: ErrorCode
    reason: str
