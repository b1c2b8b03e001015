"""The asyncio adapter: drives a sans-I/O :class:`~tunnel.connection.Connection` over a
``websockets.asyncio`` connection.

Per tunnel there is exactly: the task running :meth:`Tunnel.run` (it reads), one
writer task (it sleeps on a future when there is nothing to write, so an idle
tunnel costs no wakeups), one timer handle at the core's next deadline, and one
task per incoming open while its handler runs. Events are dispatched without
awaiting; all waiting happens in the application's own tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from websockets.asyncio.connection import Connection as WebSocket
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from ..connection import Connection
from ..errors import ErrorCode, LocalProtocolError, TunnelError
from ..events import (
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
from ..scheduler import Priority, priority_for_kind
from ..settings import Role, Settings
from ..stats import StatsTable
from ..subprotocol import SUBPROTOCOLS
from .channel import Channel, IncomingChannel
from .exceptions import ChannelRefusedError, ChannelResetError, TunnelClosedError
from .forward import Forward
from .framing import FrameWriter

logger = logging.getLogger(__name__)

WRITE_BATCH = 256 * 1024
"""Bytes of ready frames the writer hands to the transport at once. Bigger batches save
TLS writes, syscalls and wakeups of the peer (and a relay returns credit upstream per
batch, so bigger credit grants too); the batch is built without yielding, so a control
frame never waits behind more than one batch."""

OpenHandler = Callable[[IncomingChannel], Awaitable[None]]

_DEFAULT_SETTINGS: Final = Settings()


class _PendingOpen:
    """An ``open_channel`` call waiting for the peer's answer."""

    __slots__ = ("future", "kind", "meta", "priority")

    def __init__(
        self, future: asyncio.Future[Channel], kind: str, meta: dict[str, Any], priority: Priority
    ) -> None:
        self.future = future
        self.kind = kind
        self.meta = meta
        self.priority = priority


_PROTOCOL_ERRORS: Final = frozenset(
    {
        ErrorCode.PROTOCOL_ERROR,
        ErrorCode.FLOW_CONTROL_ERROR,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.BAD_REQUEST,
    }
)


def close_code_for(code: ErrorCode) -> int:
    """The WebSocket close code we use when ending a tunnel with ``code``."""
    if code is ErrorCode.NO_ERROR:
        return CloseCode.NORMAL_CLOSURE
    if code in _PROTOCOL_ERRORS:
        return CloseCode.PROTOCOL_ERROR
    if code is ErrorCode.INTERNAL_ERROR or code is ErrorCode.TIMEOUT:
        return CloseCode.INTERNAL_ERROR
    if code is ErrorCode.FORBIDDEN or code is ErrorCode.REVOKED:
        return CloseCode.POLICY_VIOLATION
    return CloseCode.GOING_AWAY


def _code_for_close(close_code: int | None) -> ErrorCode:
    """Best tunnel-level reading of a WebSocket close that came without a GOAWAY."""
    if close_code == CloseCode.NORMAL_CLOSURE:
        return ErrorCode.NO_ERROR
    if close_code == CloseCode.GOING_AWAY:
        return ErrorCode.GOING_AWAY
    if close_code == CloseCode.PROTOCOL_ERROR:
        return ErrorCode.PROTOCOL_ERROR
    if close_code == CloseCode.POLICY_VIOLATION:
        return ErrorCode.FORBIDDEN
    if close_code == CloseCode.INTERNAL_ERROR:
        return ErrorCode.INTERNAL_ERROR
    if close_code == CloseCode.MESSAGE_TOO_BIG:  # websockets enforces max_size for us
        return ErrorCode.FRAME_TOO_LARGE
    return ErrorCode.UNAVAILABLE  # lost without a close frame (1006) or anything else


class Tunnel:
    """A multiplexed tunnel over an open WebSocket (subprotocol already negotiated).

    Create it, start ``await tunnel.run()`` in a task, then open channels with
    :meth:`open_channel`; incoming opens go to ``on_open(request)``, each in its own
    task (answer with ``request.accept()`` or ``request.refuse()``). :meth:`run`
    returns once the tunnel is closed; its handler tasks are cancelled then.

    After closing: :attr:`closed` is set, :attr:`error_code` says why in tunnel terms
    (the peer's GOAWAY code if it sent one, e.g. REPLACED or REVOKED),
    :attr:`close_code`/:attr:`close_reason` are the WebSocket's, and :attr:`goaway`
    holds the peer's GOAWAY (``retry_after_ms`` tells when to reconnect).
    """

    __slots__ = (
        "_abort_timer",
        "_blocked",
        "_channels",
        "_close_error",
        "_closed",
        "_closing",
        "_conn",
        "_finished",
        "_forwards",
        "_incoming",
        "_loop",
        "_on_open",
        "_opening",
        "_running",
        "_tasks",
        "_timer",
        "_timer_at",
        "_wake",
        "_writer",
        "_ws",
        "close_code",
        "close_reason",
        "error_code",
        "goaway",
        "name",
        "role",
        "settings",
    )

    def __init__(
        self,
        ws: WebSocket,
        *,
        role: Role,
        settings: Settings | None = None,
        on_open: OpenHandler | None = None,
        name: str = "",
    ) -> None:
        if ws.subprotocol not in SUBPROTOCOLS:
            raise ValueError(f"WebSocket subprotocol is {ws.subprotocol!r}, not a tunnel one")
        self._ws = ws
        self._writer = FrameWriter(ws)  # refuses a WebSocket with extensions
        self._loop = asyncio.get_running_loop()
        self.settings = settings if settings is not None else _DEFAULT_SETTINGS
        self.name = name
        self.role = role
        self._conn = Connection(role, self.settings, now=self._loop.time(), name=name)
        self._on_open = on_open
        self._channels: dict[int, Channel] = {}
        self._opening: dict[int, _PendingOpen] = {}
        self._incoming: dict[int, IncomingChannel] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._blocked: set[Channel] = set()
        self._forwards: set[Forward] | None = None  # forwards into our channels; on demand
        self._wake: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._abort_timer: asyncio.TimerHandle | None = None
        self._running = False
        self._closing = False
        self._close_error: TunnelClosedError | None = None
        self._closed: asyncio.Event | None = None  # created on first use (idle cost)
        self._finished = False
        self.error_code: ErrorCode | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.goaway: GoAwayReceived | None = None

    def __repr__(self) -> str:
        return f"<Tunnel {self.name!r} {self.role.value}>"

    # -- observability (plain attributes for the relay's metrics) -----------------------

    @property
    def rtt(self) -> float | None:
        """Last keepalive round trip in seconds, ``None`` before the first PONG."""
        return self._conn.rtt

    @property
    def stats(self) -> StatsTable:
        """``kind -> KindStats`` (frames/bytes in/out); ``_connection`` for channel 0."""
        return self._conn.stats

    @property
    def queued_bytes(self) -> int:
        """Message bytes accepted by ``send()`` on any channel and not yet framed."""
        return self._conn.queued_bytes

    @property
    def open_channels(self) -> int:
        return self._conn.open_channels

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def closed(self) -> asyncio.Event:
        """Set once the tunnel is fully closed and :meth:`run` is returning."""
        if self._closed is None:
            self._closed = asyncio.Event()
            if self._finished:
                self._closed.set()
        return self._closed

    # -- application API ----------------------------------------------------------------

    async def run(self) -> None:
        """Drive the tunnel until it is closed (by either side, or by failure)."""
        if self._running:
            raise RuntimeError("run() is already running")
        self._running = True
        writer = self._spawn(self._write_loop(), "writer")
        self._arm_timer()
        try:
            await self._read_loop()
        finally:
            if not self._closing:  # cancelled, or the reader failed unexpectedly
                self._begin_close(ErrorCode.CANCELLED, abort=True)
            self._kick()
            # The writer finishes the closing handshake; the abort timer bounds it.
            await asyncio.gather(writer, return_exceptions=True)
            self._cancel_timers()
            tasks = [task for task in self._tasks if not task.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._set_closed()
            logger.debug(
                "[%s] = closed: %s, websocket %s %s",
                self.name,
                self.error_code.name if self.error_code is not None else "-",
                self.close_code,
                self.close_reason,
            )

    async def open_channel(
        self,
        kind: str,
        meta: dict[str, Any] | None = None,
        *,
        priority: Priority | None = None,
        window: int | None = None,
        max_message: int | None = None,
    ) -> Channel:
        """Open a channel and wait for the peer's answer.

        ``priority`` defaults from ``kind`` (see :func:`tunnel.priority_for_kind`);
        ``window``/``max_message`` default from :class:`Settings`. Raises
        :class:`ChannelRefusedError` (refused, timed out, going away, too many channels)
        or :class:`TunnelClosedError`. Cancelling the call cancels the open.
        """
        self._check_open()
        if priority is None:
            priority = priority_for_kind(kind)
        try:
            channel_id = self._conn.open(
                kind,
                meta,
                now=self._loop.time(),
                priority=priority,
                window=window,
                max_message=max_message,
            )
        except LocalProtocolError as exc:
            raise ChannelRefusedError(exc.code, str(exc)) from None
        future: asyncio.Future[Channel] = self._loop.create_future()
        self._opening[channel_id] = _PendingOpen(future, kind, meta or {}, priority)
        self._kick()
        self._arm_timer()
        try:
            return await future
        except asyncio.CancelledError:
            if self._opening.pop(channel_id, None) is not None:
                self._conn.reset(channel_id, ErrorCode.CANCELLED)
                self._kick()
            elif future.done() and not future.cancelled() and future.exception() is None:
                future.result().reset(ErrorCode.CANCELLED)  # accepted as we were cancelled
            raise

    async def go_away(
        self, code: ErrorCode = ErrorCode.GOING_AWAY, retry_after_ms: int = 0, reason: str = ""
    ) -> None:
        """Ask the peer to stop opening channels here and come back (elsewhere) after
        ``retry_after_ms``. Channels keep working; call :meth:`close` when done."""
        self._check_open()
        self._conn.go_away(code, retry_after_ms, reason)
        self._kick()

    async def close(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close now: a final GOAWAY with ``code``/``reason``, then the WebSocket closing
        handshake (bounded by ``Settings.close_timeout``). Every channel fails with
        :class:`TunnelClosedError`. Returns when closed; idempotent."""
        if not self._closing:
            self._conn.terminate(code, reason)
            self._begin_close(code)
        if self._running:
            await self.closed.wait()
        else:  # never ran: nobody else will close the WebSocket
            await self._close_websocket()
            self._set_closed()

    # -- loops --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        ws = self._ws
        conn = self._conn
        time = self._loop.time
        while True:
            try:
                data = await ws.recv()
            except ConnectionClosed:
                break
            if type(data) is not bytes:
                if not self._closing:
                    logger.warning("[%s] ! text message on a tunnel", self.name)
                    self._conn.terminate(ErrorCode.PROTOCOL_ERROR, "text message")
                    self._begin_close(ErrorCode.PROTOCOL_ERROR)
                continue
            events = conn.receive_message(data, time())
            if events:
                self._dispatch(events)
            if conn.wants_write:
                self._kick()
        if not self._closing:
            # The peer's close frame, else the one websockets sent when it failed the
            # connection itself (e.g. 1009 above max_size), else none: 1006.
            protocol = ws.protocol
            close = protocol.close_rcvd or protocol.close_sent
            self.close_code = close.code if close is not None else CloseCode.ABNORMAL_CLOSURE
            self.close_reason = close.reason if close is not None else ""
            code = self.goaway.code if self.goaway is not None else _code_for_close(self.close_code)
            self._begin_close(code, local=False)

    async def _write_loop(self) -> None:
        ws = self._ws
        conn = self._conn
        loop = self._loop
        writer = self._writer
        try:
            while True:
                frame = conn.next_frame_parts()
                if frame is None:
                    if self._closing:
                        break
                    self._wake = loop.create_future()
                    try:
                        await self._wake
                    finally:
                        self._wake = None
                    continue
                # Coalesce what is ready into one transport write: one TLS flush and
                # one syscall per batch instead of one per frame, the relay's largest
                # per-byte cost. send_context checks state and drains, like ws.send.
                async with ws.send_context():
                    batched = 0
                    while frame is not None:
                        head, body = frame
                        writer.add(head, body)
                        batched += len(head) + len(body)
                        if batched >= WRITE_BATCH:
                            break
                        frame = conn.next_frame_parts()
                    writer.flush()
                if self._blocked:
                    self._release_senders()
                if self._forwards:
                    for forward in self._forwards:
                        forward._framed()
        except ConnectionClosed:
            return
        except Exception:  # a bug: never leave a tunnel that silently stopped writing
            logger.exception("[%s] ! writer failed", self.name)
            self._begin_close(ErrorCode.INTERNAL_ERROR, abort=True)
            return
        await self._close_websocket()

    async def _close_websocket(self) -> None:
        # close() swallows ConnectionClosed: closing a closed WebSocket is a no-op.
        await self._ws.close(self.close_code or CloseCode.NORMAL_CLOSURE, self.close_reason)

    # -- closing ------------------------------------------------------------------------

    def _begin_close(self, code: ErrorCode, *, local: bool = True, abort: bool = False) -> None:
        """Enter closing: fail everything the application waits on, let the writer flush
        the final GOAWAY and close the WebSocket, and bound how long that may take."""
        if self._closing:
            return
        self._closing = True
        if self.error_code is None:
            self.error_code = code
        if local:
            self.close_code = close_code_for(code)
            self.close_reason = code.name
        self._conn.terminate(code)
        error = self._close_error = TunnelClosedError(
            self.error_code, self.close_reason, close_code=self.close_code
        )
        for pending in self._opening.values():
            self._fail_open(pending, error)
        self._opening.clear()
        for request in self._incoming.values():
            request._error = error
        self._incoming.clear()
        for channel in list(self._channels.values()):
            channel._fail(error)
        self._channels.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if abort:
            self._abort()
        elif self._running:
            self._abort_timer = self._loop.call_later(self.settings.close_timeout, self._abort)
        self._kick()
        logger.info(
            "[%s] = closing: %s (websocket %s)", self.name, self.error_code.name, self.close_code
        )

    def _set_closed(self) -> None:
        self._finished = True
        if self._closed is not None:
            self._closed.set()

    def _abort(self) -> None:
        """Drop the TCP connection without a closing handshake (dead or stuck peer)."""
        self._ws.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._abort_timer = None

    def _check_open(self) -> None:
        if self._closing:
            assert self._close_error is not None
            raise self._close_error.with_traceback(None)

    # -- events -------------------------------------------------------------------------

    def _dispatch(self, events: list[Event]) -> None:
        """Apply core events to channels and waiters. Must never await."""
        for event in events:
            if type(event) is ChunkReceived:
                channel = self._channels.get(event.channel_id)
                forward = channel._forward_out if channel is not None else None
                if forward is not None:
                    forward._chunk(event.data, event.more)
                else:  # the forward ended an instant ago: give the credit back
                    self._conn.message_consumed(event.channel_id, len(event.data))
            elif type(event) is MessageReceived:
                channel = self._channels.get(event.channel_id)
                if channel is not None:
                    channel._deliver(event.data)
                else:  # reset locally an instant ago: give the credit back
                    self._conn.message_consumed(event.channel_id, len(event.data))
            elif isinstance(event, ChannelRequested):
                self._on_requested(event)
            elif isinstance(event, ChannelAccepted):
                self._on_accepted(event)
            elif isinstance(event, ChannelRefused):
                pending = self._opening.pop(event.channel_id, None)
                if pending is not None:
                    self._fail_open(pending, ChannelRefusedError(event.code, event.reason))
            elif isinstance(event, ChannelEnded):
                channel = self._channels.get(event.channel_id)
                if channel is not None:
                    channel._on_eof()
            elif isinstance(event, ChannelReset):
                self._on_reset(event)
            elif isinstance(event, GoAwayReceived):
                self.goaway = event
                logger.info(
                    "[%s] < GOAWAY %s retry after %d ms",
                    self.name,
                    event.code.name,
                    event.retry_after_ms,
                )
            elif isinstance(event, ConnectionFailed):
                self._begin_close(event.code, abort=event.code is ErrorCode.TIMEOUT)

    def _on_requested(self, event: ChannelRequested) -> None:
        if self._on_open is None:
            self._conn.refuse(event.channel_id, ErrorCode.REFUSED, "no channels accepted")
            return
        request = IncomingChannel(self, event.channel_id, event.kind, event.meta)
        self._incoming[event.channel_id] = request
        self._spawn(self._handle_open(self._on_open, request), f"open-{event.channel_id}")
        self._arm_timer()

    def _on_accepted(self, event: ChannelAccepted) -> None:
        channel_id = event.channel_id
        pending = self._opening.pop(channel_id, None)
        if pending is None or pending.future.done():  # cancelled meanwhile
            self._conn.reset(channel_id, ErrorCode.CANCELLED)
            return
        channel = Channel(
            self, channel_id, pending.kind, pending.meta, event.meta, pending.priority
        )
        self._channels[channel_id] = channel
        pending.future.set_result(channel)

    def _on_reset(self, event: ChannelReset) -> None:
        channel_id = event.channel_id
        error = ChannelResetError(event.code, event.reason, remote=event.remote)
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel._fail(error)
            return
        request = self._incoming.pop(channel_id, None)
        if request is not None:
            request._error = error
            return
        pending = self._opening.pop(channel_id, None)
        if pending is not None:
            self._fail_open(pending, ChannelRefusedError(event.code, event.reason))

    @staticmethod
    def _fail_open(pending: _PendingOpen, error: Exception) -> None:
        if not pending.future.done():
            pending.future.set_exception(error)
            pending.future.exception()  # mark retrieved: a cancelled opener never reads it

    async def _handle_open(self, handler: OpenHandler, request: IncomingChannel) -> None:
        try:
            await handler(request)
        except TunnelError as exc:
            logger.debug("[%s] ! open handler for %r ended: %s", self.name, request, exc)
            self._unanswered(request, ErrorCode.INTERNAL_ERROR)
        except Exception:
            logger.exception("[%s] ! open handler for %r failed", self.name, request)
            self._unanswered(request, ErrorCode.INTERNAL_ERROR)
        else:
            self._unanswered(request, ErrorCode.REFUSED)

    def _unanswered(self, request: IncomingChannel, code: ErrorCode) -> None:
        if not request.answered and not self._closing:
            request.refuse(code, "not accepted" if code is ErrorCode.REFUSED else "internal error")

    # -- helpers for Channel / IncomingChannel -------------------------------------------

    def _accept(
        self,
        request: IncomingChannel,
        meta: dict[str, Any],
        priority: Priority | None,
        window: int | None,
        max_message: int | None,
    ) -> Channel:
        if priority is None:
            priority = priority_for_kind(request.kind)
        self._conn.accept(
            request.id, meta, priority=priority, window=window, max_message=max_message
        )
        self._kick()
        self._incoming.pop(request.id, None)
        channel = Channel(self, request.id, request.kind, request.meta, meta, priority)
        self._channels[request.id] = channel
        request.channel = channel
        return channel

    def _unregister(self, channel: Channel) -> None:
        if self._channels.get(channel.id) is channel:
            del self._channels[channel.id]
        self._blocked.discard(channel)

    def _consumed(self, channel_id: int, nbytes: int) -> None:
        conn = self._conn
        conn.message_consumed(channel_id, nbytes)
        if conn.wants_write:
            self._kick()

    def _add_forward(self, forward: Forward) -> None:
        if self._forwards is None:
            self._forwards = set()
        self._forwards.add(forward)

    def _remove_forward(self, forward: Forward) -> None:
        if self._forwards is not None:
            self._forwards.discard(forward)
            if not self._forwards:
                self._forwards = None

    def _release_senders(self) -> None:
        """Wake senders whose channel backlog fell to the low-water mark (half the high)."""
        low = self.settings.send_high_water // 2
        conn = self._conn
        for channel in list(self._blocked):
            if conn.channel_queued(channel.id) <= low:
                channel._wake_senders()

    def _kick(self) -> None:
        """Wake the writer if it sleeps."""
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _arm_timer(self) -> None:
        """Make sure the timer fires no later than the core's next deadline. A timer set
        for an earlier time is kept: it fires, finds nothing due, and re-arms."""
        if self._closing:
            return
        deadline = self._conn.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        events = self._conn.tick(self._loop.time())
        if events:
            self._dispatch(events)
        if self._conn.wants_write:
            self._kick()
        self._arm_timer()

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Every task of this tunnel: named, referenced until done, cancelled by run()."""
        task = self._loop.create_task(coro, name=f"tunnel[{self.name}] {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
