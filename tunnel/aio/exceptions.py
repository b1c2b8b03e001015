"""Exceptions the asyncio adapter raises to the application.

All are :class:`~tunnel.errors.TunnelError`; all channel failures are
:class:`ChannelError` and carry the wire ``code`` and the peer's (or our) ``reason``.
"""

from __future__ import annotations

from ..errors import ErrorCode, TunnelError


class ChannelError(TunnelError):
    """A channel failed or could not be opened."""

    def __init__(self, code: ErrorCode, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code.name}: {self.reason}" if self.reason else self.code.name


class ChannelRefusedError(ChannelError):
    """``open_channel`` failed: the peer refused, it timed out (TIMEOUT), the tunnel is
    going away (GOING_AWAY) or the channel limit is reached (TOO_MANY_CHANNELS)."""


class ChannelResetError(ChannelError):
    """The channel was aborted. ``remote`` = by the peer; otherwise here (the peer
    broke a channel rule, or an incoming open was not answered in time)."""

    def __init__(self, code: ErrorCode, reason: str = "", *, remote: bool) -> None:
        super().__init__(code, reason)
        self.remote = remote


class TunnelClosedError(ChannelError):
    """The tunnel is closed. ``code`` is the tunnel-level reason (the peer's GOAWAY code,
    our failure code, or one derived from the WebSocket close); ``close_code`` is the
    WebSocket close code (1006 when the connection was lost without one)."""

    def __init__(self, code: ErrorCode, reason: str = "", *, close_code: int | None) -> None:
        super().__init__(code, reason)
        self.close_code = close_code
