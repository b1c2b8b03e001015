"""Channel objects handed to the application: a message stream with backpressure."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import ErrorCode
from ..scheduler import Priority
from .exceptions import ChannelError, ChannelResetError

if TYPE_CHECKING:
    from .forward import Forward
    from .tunnel import Tunnel

logger = logging.getLogger(__name__)


class Channel:
    """One open channel. Messages are whole ``bytes`` objects in both directions.

    * :meth:`send` queues one message and waits first while this channel's unframed
      backlog exceeds ``Settings.send_high_water`` (so memory per channel stays
      bounded by roughly that plus one message);
    * :meth:`recv` returns the next message; taking it is what returns credit to the
      sender, so a slow reader throttles its own sender and no other channel;
    * :meth:`close` half-closes (EOF after the queued messages), :meth:`reset` aborts.

    Failures raise :class:`ChannelResetError` (reset by either side) or
    :class:`TunnelClosedError`; :meth:`recv` raises ``EOFError`` after the peer
    half-closed and every message was read. Always end a channel with
    :meth:`close` or :meth:`reset` (``async with channel:`` does it).
    """

    __slots__ = (
        "_buffered",
        "_closed_waiter",
        "_eof",
        "_error",
        "_finished",
        "_forward_in",
        "_forward_out",
        "_inbox",
        "_local_closed",
        "_recv_waiter",
        "_send_waiters",
        "_tunnel",
        "accept_meta",
        "id",
        "kind",
        "priority",
        "request_meta",
    )

    def __init__(
        self,
        tunnel: Tunnel,
        channel_id: int,
        kind: str,
        request_meta: dict[str, Any],
        accept_meta: dict[str, Any],
        priority: Priority,
    ) -> None:
        self._tunnel = tunnel
        self.id = channel_id
        self.kind = kind
        self.request_meta = request_meta
        """The OPEN metadata (without ``kind``), whichever side opened."""
        self.accept_meta = accept_meta
        """The ACCEPT metadata."""
        self.priority = priority
        self._inbox: deque[bytes] | None = None  # created on demand, dropped when empty
        self._buffered = 0
        self._recv_waiter: asyncio.Future[None] | None = None
        self._send_waiters: list[asyncio.Future[None]] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._local_closed = False
        self._finished = False
        self._error: ChannelError | None = None
        self._forward_out: Forward | None = None  # our received data goes there
        self._forward_in: Forward | None = None  # it sends on our behalf

    def __repr__(self) -> str:
        return f"<Channel {self.id} {self.kind} on {self._tunnel.name!r}>"

    @property
    def queued_bytes(self) -> int:
        """Bytes given to :meth:`send` and not yet framed."""
        return self._tunnel._conn.channel_queued(self.id)

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet taken by :meth:`recv` (at most our window)."""
        return self._buffered

    @property
    def eof_received(self) -> bool:
        return self._eof

    async def send(self, data: bytes) -> None:
        """Send one message (1 byte up to the peer's max_message).

        Waits while the channel's backlog is above the high-water mark. Several tasks
        may send on one channel; each message is sent whole, in the order the sends
        got past the wait. Raises ``LocalProtocolError`` after :meth:`close` or for an
        oversize message.
        """
        if self._forward_in is not None:
            raise RuntimeError(f"{self!r} is the target of a forward")
        tunnel = self._tunnel
        conn = tunnel._conn
        high = tunnel.settings.send_high_water
        while True:
            if self._error is not None:
                raise self._error.with_traceback(None)
            if conn.channel_queued(self.id) <= high:
                break
            waiter = tunnel._loop.create_future()
            if self._send_waiters is None:
                self._send_waiters = []
                tunnel._blocked.add(self)
            self._send_waiters.append(waiter)
            try:
                await waiter
            finally:
                waiters = self._send_waiters
                if waiters is not None and waiter in waiters:  # cancelled while waiting
                    waiters.remove(waiter)
                    if not waiters:
                        self._send_waiters = None
                        tunnel._blocked.discard(self)
        conn.send_message(self.id, data if type(data) is bytes else bytes(data))
        tunnel._kick()

    async def recv(self) -> bytes:
        """The next message. ``EOFError`` once the peer half-closed and all was read."""
        if self._forward_out is not None:
            raise RuntimeError(f"{self!r} is being forwarded")
        while not self._inbox:
            if self._error is not None:
                raise self._error.with_traceback(None)
            if self._eof:
                raise EOFError(f"channel {self.id} ({self.kind}) ended")
            if self._recv_waiter is not None:
                raise RuntimeError("another coroutine is already waiting in recv()")
            waiter = self._recv_waiter = self._tunnel._loop.create_future()
            try:
                await waiter
            finally:
                self._recv_waiter = None
        inbox = self._inbox
        data = inbox.popleft()
        if not inbox:
            self._inbox = None
        size = len(data)
        self._buffered -= size
        self._tunnel._consumed(self.id, size)
        return data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.recv()
            except EOFError:
                return

    async def close(self) -> None:
        """Half-close: the peer gets EOF after the messages already sent. Idempotent;
        does nothing if the channel already failed."""
        self._close_now()

    def _close_now(self) -> None:
        if self._local_closed or self._error is not None:
            return
        self._local_closed = True
        self._tunnel._conn.close(self.id)
        self._tunnel._kick()
        if self._eof:
            self._finish()

    def reset(self, code: ErrorCode = ErrorCode.CANCELLED, reason: str = "") -> None:
        """Abort both directions; queued data is dropped. Idempotent."""
        if self._error is not None:
            return
        self._tunnel._conn.reset(self.id, code, reason)
        self._tunnel._kick()
        self._fail(ChannelResetError(code, reason, remote=False))

    async def wait_closed(self) -> None:
        """Return once both directions are closed, or the channel failed."""
        if not self._finished:
            if self._closed_waiter is None:
                self._closed_waiter = self._tunnel._loop.create_future()
            await asyncio.shield(self._closed_waiter)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
        elif isinstance(exc, asyncio.CancelledError):
            self.reset(ErrorCode.CANCELLED)
        elif not isinstance(exc, ChannelError):
            self.reset(ErrorCode.INTERNAL_ERROR)

    # -- called by Tunnel while dispatching events (never awaits) ----------------------

    def _deliver(self, data: bytes) -> None:
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(data)
        self._buffered += len(data)
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take_inbox(self) -> deque[bytes]:
        """Hand over the messages not read yet (a forward starts with them)."""
        inbox = self._inbox or deque()
        self._inbox = None
        self._buffered = 0
        return inbox

    def _on_eof(self) -> None:
        self._eof = True
        if self._forward_out is not None:
            self._forward_out._eof()
        self._wake_receiver()
        if self._local_closed:
            self._finish()

    def _fail(self, error: ChannelError) -> None:
        if self._error is not None:
            return
        self._error = error
        self._inbox = None
        self._buffered = 0
        for forward in (self._forward_out, self._forward_in):
            if forward is not None:
                forward._fail(error)
        self._wake_receiver()
        self._wake_senders()
        self._finish()

    def _wake_senders(self) -> None:
        waiters = self._send_waiters
        if waiters is not None:
            self._send_waiters = None
            self._tunnel._blocked.discard(self)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _wake_receiver(self) -> None:
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._tunnel._unregister(self)
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)


class IncomingChannel:
    """A channel the peer asked for; the ``on_open`` handler answers it exactly once
    with :meth:`accept` or :meth:`refuse`. A handler that returns without answering
    refuses (REFUSED); one that raises refuses with INTERNAL_ERROR (text stays local)."""

    __slots__ = ("_error", "_refused", "_tunnel", "channel", "id", "kind", "meta")

    def __init__(self, tunnel: Tunnel, channel_id: int, kind: str, meta: dict[str, Any]) -> None:
        self._tunnel = tunnel
        self.id = channel_id
        self.kind = kind
        self.meta = meta
        """The OPEN metadata without ``kind``."""
        self.channel: Channel | None = None
        self._refused = False
        self._error: ChannelError | None = None

    def __repr__(self) -> str:
        return f"<IncomingChannel {self.id} {self.kind} on {self._tunnel.name!r}>"

    @property
    def answered(self) -> bool:
        """Accepted, refused, or no longer answerable (cancelled, timed out, closed)."""
        return self.channel is not None or self._refused or self._error is not None

    def accept(
        self,
        meta: dict[str, Any] | None = None,
        *,
        priority: Priority | None = None,
        window: int | None = None,
        max_message: int | None = None,
    ) -> Channel:
        """Accept and return the open channel. Raises :class:`ChannelResetError` if the
        opener gave up or the answer came too late, :class:`TunnelClosedError` if the
        tunnel is gone, ``LocalProtocolError`` if already answered."""
        self._check()
        return self._tunnel._accept(self, meta or {}, priority, window, max_message)

    def refuse(self, code: ErrorCode = ErrorCode.REFUSED, reason: str = "") -> None:
        """Refuse; ``reason`` goes to the peer, so keep secrets and exception text out."""
        self._check()
        self._tunnel._conn.refuse(self.id, code, reason)
        self._tunnel._kick()
        self._tunnel._incoming.pop(self.id, None)
        self._refused = True

    def _check(self) -> None:
        if self.channel is not None or self._refused:
            raise RuntimeError(f"channel {self.id} was already answered")
        if self._error is not None:
            raise self._error.with_traceback(None)
