"""The sans-I/O tunnel connection: whole WebSocket messages in, events and frames out.

Contract with the adapter (``tunnel.aio`` is one):

* feed every received binary message to :meth:`Connection.receive_message` with the
  current monotonic time; it returns events and **never raises** -- bad input becomes
  a channel reset or a :class:`~tunnel.events.ConnectionFailed` event;
* write what :meth:`Connection.next_frame` (or ``next_frame_parts``) returns, one
  frame per WebSocket message, until it returns ``None``; call it again after any
  method call (check :attr:`Connection.wants_write`);
* call :meth:`Connection.tick` at or after :meth:`Connection.next_deadline`;
* after ``ConnectionFailed`` or :meth:`Connection.terminate`, flush ``next_frame()``
  (the final GOAWAY) and close the transport.

Nothing here touches a socket, a loop or a clock: time is always an argument.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from .channel import NEXT, ChannelState, Input, State
from .errors import ErrorCode, FrameError, LocalProtocolError
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
from .flow import ReceiveWindow, SendCredit
from .frames import (
    FLAG_MORE,
    AcceptFrame,
    CloseFrame,
    CreditFrame,
    GoAwayFrame,
    OpenFrame,
    PingFrame,
    PongFrame,
    RefuseFrame,
    ResetFrame,
    decode_data_header,
    decode_frame,
    encode_credit,
    encode_data_header,
    is_data,
)
from .limits import (
    HEADER_SIZE,
    MAX_CHANNEL_ID,
    MAX_CHANNELS,
    MAX_CHUNK,
    MAX_CONTROL_BACKLOG,
    MAX_KIND_LENGTH,
)
from .scheduler import INTERACTIVE, Priority, Scheduler, priority_for_kind
from .settings import Role, Settings
from .stats import CONNECTION_KIND, KindStats, StatsTable

logger = logging.getLogger(__name__)

KIND_PATTERN: Final = re.compile(rf"[a-z][a-z0-9_.-]{{0,{MAX_KIND_LENGTH - 1}}}")
"""Channel kinds: short lowercase names, usable as metric labels."""

_U32_MAX: Final = 0xFFFF_FFFF
_LIVE_SENDERS: Final = (State.OPEN, State.HALF_CLOSED_LOCAL)  # the peer may still send DATA


def _wire_reason(code: ErrorCode) -> str:
    """The only text a connection failure puts on the wire: derived from the code."""
    return code.name.lower().replace("_", " ")


class _Deadlines:
    """Open deadlines of one kind in expiry order (one timeout each, so appends stay sorted).

    An entry is live while ``channel.open_deadline`` still equals it; answered channels
    leave stale entries that are skipped, and compacted so the queue stays bounded.
    The deque exists only while entries do: most connections are idle (see MEMORY).
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: deque[tuple[float, ChannelState]] | None = None

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0

    def push(self, deadline: float, channel: ChannelState) -> None:
        channel.open_deadline = deadline
        entries = self._entries
        if entries is None:
            entries = self._entries = deque()
        entries.append((deadline, channel))
        if len(entries) > 2 * MAX_CHANNELS:
            self._entries = deque(e for e in entries if e[1].open_deadline == e[0])

    def peek(self) -> float | None:
        entries = self._entries
        while entries:
            deadline, channel = entries[0]
            if channel.open_deadline == deadline:
                return deadline
            entries.popleft()
        self._entries = None
        return None

    def expired(self, now: float) -> list[ChannelState]:
        result = []
        while (deadline := self.peek()) is not None and deadline <= now:
            assert self._entries is not None
            result.append(self._entries.popleft()[1])
        return result


class Connection:
    """One end of a tunnel. See the module docstring for the adapter contract.

    Application-facing methods (``open``, ``accept``, ``send_message``...) raise
    :class:`LocalProtocolError` when called in the wrong state and ``ValueError``
    for arguments outside the protocol's limits; ``close``, ``reset`` and
    ``message_consumed`` on a channel that no longer exists are no-ops, because the
    peer may end a channel at any moment.
    """

    __slots__ = (
        "_channels",
        "_conn_stats",
        "_control",
        "_control_bytes",
        "_credits",
        "_error",
        "_goaway_received",
        "_goaway_sent",
        "_interactive",
        "_last_peer_id",
        "_last_recv",
        "_n_requested",
        "_next_id",
        "_now",
        "_opening",
        "_peer_parity",
        "_ping_idle",
        "_ping_opaque",
        "_ping_sent",
        "_ping_timeout",
        "_probing",
        "_queued",
        "_requested",
        "_scheduler",
        "name",
        "role",
        "rtt",
        "settings",
        "stats",
    )

    def __init__(
        self, role: Role, settings: Settings | None = None, *, now: float, name: str = ""
    ) -> None:
        self.role = role
        self.settings = settings = settings if settings is not None else Settings()
        self.name = name
        self.rtt: float | None = None
        """Round-trip time of the last answered keepalive PING, in seconds."""
        self.stats = StatsTable()
        """``kind -> KindStats`` traffic counters (see :mod:`tunnel.stats`)."""
        self._conn_stats = self.stats.for_kind(CONNECTION_KIND)
        self._channels: dict[int, ChannelState] = {}
        self._next_id = 1 if role is Role.CLIENT else 2
        self._peer_parity = 0 if role is Role.CLIENT else 1
        self._last_peer_id = 0
        # Created on demand and dropped when drained: an idle connection holds no deque.
        self._control: deque[tuple[bytes, KindStats]] | None = None
        self._control_bytes = 0
        self._credits: list[ChannelState] = []  # at most one entry per channel
        self._scheduler = Scheduler()
        self._queued = 0
        self._interactive = 0  # live channels of an INTERACTIVE priority (cap BULK in flight)
        self._error: ErrorCode | None = None
        self._goaway_sent = False
        self._goaway_received = False
        self._n_requested = 0
        self._opening = _Deadlines()
        self._requested = _Deadlines()
        self._now = now
        self._last_recv = now
        self._ping_idle = settings.ping_idle(role)
        self._ping_timeout = settings.ping_timeout(role)
        self._ping_sent: float | None = None
        self._ping_opaque = 0
        self._probing = False

    # -- state queries ---------------------------------------------------------------

    @property
    def terminated(self) -> bool:
        """True once the connection failed or :meth:`terminate` was called."""
        return self._error is not None

    @property
    def error(self) -> ErrorCode | None:
        """The code the connection ended with, if it did."""
        return self._error

    @property
    def goaway_received(self) -> bool:
        return self._goaway_received

    @property
    def queued_bytes(self) -> int:
        """Message bytes accepted by ``send_message`` and not framed yet, all channels."""
        return self._queued

    @property
    def open_channels(self) -> int:
        """Live channels, both directions, including unanswered opens."""
        return len(self._channels)

    def channel_queued(self, channel_id: int) -> int:
        """Unframed message bytes of one channel (0 if it is gone)."""
        channel = self._channels.get(channel_id)
        return channel.tx_queued if channel is not None else 0

    @property
    def wants_write(self) -> bool:
        """True if :meth:`next_frame` may return a frame."""
        return bool(self._control or self._credits or self._scheduler)

    # -- application actions ---------------------------------------------------------

    def open(
        self,
        kind: str,
        meta: dict[str, Any] | None = None,
        *,
        now: float,
        priority: Priority | None = None,
        window: int | None = None,
        max_message: int | None = None,
    ) -> int:
        """Queue an OPEN and return the new channel id.

        Expect ``ChannelAccepted`` or ``ChannelRefused`` (TIMEOUT after
        ``Settings.open_timeout``). Raises ``LocalProtocolError`` with GOING_AWAY
        after a GOAWAY either way, TOO_MANY_CHANNELS at the channel limit.
        """
        self._check_alive()
        if self._goaway_sent or self._goaway_received:
            raise LocalProtocolError(ErrorCode.GOING_AWAY, "connection is going away")
        if not KIND_PATTERN.fullmatch(kind):
            raise ValueError(f"invalid channel kind {kind!r}")
        if meta and "kind" in meta:
            raise ValueError("meta must not contain 'kind'; pass it as kind")
        priority = priority_for_kind(kind) if priority is None else priority
        window, max_message = self._receive_limits(priority, window, max_message)
        if len(self._channels) >= self.settings.max_channels:
            raise LocalProtocolError(ErrorCode.TOO_MANY_CHANNELS, "channel limit reached")
        channel_id = self._next_id
        if channel_id > MAX_CHANNEL_ID:
            raise LocalProtocolError(ErrorCode.TOO_MANY_CHANNELS, "channel ids exhausted")
        frame = OpenFrame(channel_id, window, max_message, {"kind": kind, **(meta or {})})
        data = frame.encode()  # ValueError before any state changes
        self._next_id = channel_id + 2
        channel = ChannelState(
            channel_id,
            kind,
            State.IDLE,
            self.stats.for_kind(kind),
            window=window,
            max_message=max_message,
        )
        self._move(channel, Input.SEND_OPEN)
        self._channels[channel_id] = channel
        self._set_priority(channel, priority)
        self._opening.push(now + self.settings.open_timeout, channel)
        self._queue_control(data, channel.stats)
        logger.debug("[%s] > OPEN %d kind=%s", self.name, channel_id, kind)
        return channel_id

    def _receive_limits(
        self, priority: Priority, window: int | None, max_message: int | None
    ) -> tuple[int, int]:
        """The window and max message we advertise for a channel of ``priority``.

        BULK channels get the smaller ``Settings.bulk_window``: whatever a peer may send
        us ahead of consumption can sit in socket buffers, where priorities cannot reach
        it, in front of control and input frames of the same connection.
        """
        default = self.settings.bulk_window if priority is Priority.BULK else self.settings.window
        window = default if window is None else window
        if max_message is None:
            max_message = min(self.settings.max_message, window)
        return window, max_message

    def accept(
        self,
        channel_id: int,
        meta: dict[str, Any] | None = None,
        *,
        priority: Priority | None = None,
        window: int | None = None,
        max_message: int | None = None,
    ) -> None:
        """Answer a ``ChannelRequested`` with ACCEPT; the channel is then open."""
        channel = self._requested_channel(channel_id)
        priority = priority_for_kind(channel.kind) if priority is None else priority
        window, max_message = self._receive_limits(priority, window, max_message)
        data = AcceptFrame(channel_id, window, max_message, meta or {}).encode()
        self._move(channel, Input.SEND_ACCEPT)
        if window != channel.rx.window:
            channel.rx = ReceiveWindow(window)
        channel.max_message = max_message
        self._set_priority(channel, priority)
        self._queue_control(data, channel.stats)
        logger.debug("[%s] > ACCEPT %d", self.name, channel_id)

    def refuse(
        self, channel_id: int, code: ErrorCode = ErrorCode.REFUSED, reason: str = ""
    ) -> None:
        """Answer a ``ChannelRequested`` with REFUSE; the channel is gone."""
        channel = self._requested_channel(channel_id)
        self._move(channel, Input.SEND_REFUSE)
        self._remove(channel)
        self._queue_control(RefuseFrame(channel_id, code, reason).encode(), channel.stats)
        logger.debug("[%s] > REFUSE %d %s", self.name, channel_id, code.name)

    def send_message(self, channel_id: int, data: bytes) -> None:
        """Queue one message (1 byte .. the peer's max_message). Do not mutate ``data``
        afterwards: it is framed lazily, in chunks, as credit and priority allow."""
        channel = self._sending_channel(channel_id)
        size = len(data)
        if size > channel.peer_max_message:
            raise LocalProtocolError(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"message of {size} bytes, the peer accepts {channel.peer_max_message}",
            )
        if size == 0:
            raise ValueError("messages must not be empty")
        if channel.tx_message:
            raise LocalProtocolError(
                ErrorCode.PROTOCOL_ERROR, "a message sent in chunks is not finished"
            )
        self._queue_data(channel, data, False)

    def send_chunk(self, channel_id: int, data: bytes | memoryview, more: bool) -> None:
        """Queue part of a message, ``more`` = the message continues with the next chunk.

        For relays forwarding :class:`ChunkReceived` chunks as they arrive, without
        reassembling. The message's size so far is checked against the peer's
        max_message (``LocalProtocolError`` MESSAGE_TOO_LARGE: the caller resets the
        channel, the receiver never sees the partial message). Chunks of any size are
        re-cut to MAX_CHUNK and credit like messages; do not mutate ``data``.
        """
        channel = self._sending_channel(channel_id)
        size = len(data)
        if size == 0:
            raise ValueError("chunks must not be empty")
        total = channel.tx_message + size
        if total > channel.peer_max_message:
            raise LocalProtocolError(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"message of {total}+ bytes, the peer accepts {channel.peer_max_message}",
            )
        channel.tx_message = total if more else 0
        self._queue_data(channel, data, more)

    def _sending_channel(self, channel_id: int) -> ChannelState:
        channel = self._channels.get(channel_id)
        if channel is None:
            raise LocalProtocolError(ErrorCode.CANCELLED, f"channel {channel_id} is gone")
        if NEXT[channel.state][Input.SEND_DATA] is None:
            raise LocalProtocolError(
                ErrorCode.PROTOCOL_ERROR, f"cannot send on a channel in {channel.state.name}"
            )
        return channel

    def _queue_data(self, channel: ChannelState, data: bytes | memoryview, more: bool) -> None:
        size = len(data)
        queue = channel.tx_queue
        if queue is None:
            queue = channel.tx_queue = deque()
        queue.append((data, more))
        channel.tx_queued += size
        self._queued += size
        if channel.tx.credit > 0:
            self._scheduler.push(channel)

    def receive_in_chunks(self, channel_id: int) -> list[memoryview]:
        """Switch a channel to chunk mode: from now on its DATA is reported as
        :class:`ChunkReceived` as it arrives instead of reassembled into messages
        (max_message is still enforced, by counting). Returns the parts of a message
        already partly received, to be passed on first as chunks with ``more``. Messages
        already reported whole stay whole. For relays; irreversible. Idempotent."""
        channel = self._channels.get(channel_id)
        if channel is None:
            raise LocalProtocolError(ErrorCode.CANCELLED, f"channel {channel_id} is gone")
        channel.chunked = True
        parts, channel.rx_parts = channel.rx_parts, []
        return parts

    def close(self, channel_id: int) -> None:
        """Half-close: CLOSE is sent after the messages already queued. Idempotent."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.local_closed:
            return
        self._move(channel, Input.SEND_CLOSE)
        channel.local_closed = True
        channel.close_pending = True
        if channel.sendable:
            self._scheduler.push(channel)
        logger.debug("[%s] = %d closing", self.name, channel_id)

    def reset(
        self, channel_id: int, code: ErrorCode = ErrorCode.CANCELLED, reason: str = ""
    ) -> None:
        """Abort a channel (or cancel our pending OPEN): queued data is dropped and RESET
        sent. Incoming opens are refused, not reset. No-op if the channel is gone."""
        channel = self._channels.get(channel_id)
        if channel is None:
            return
        self._move(channel, Input.SEND_RESET)
        self._remove(channel)
        self._queue_control(ResetFrame(channel_id, code, reason).encode(), channel.stats)
        logger.debug("[%s] > RESET %d %s", self.name, channel_id, code.name)

    def message_consumed(self, channel_id: int, nbytes: int) -> None:
        """The application took a message of ``nbytes``: maybe queue CREDIT for it."""
        channel = self._channels.get(channel_id)
        if channel is None:
            return
        channel.rx.consume(nbytes)
        self._return_credit(channel)

    def go_away(
        self, code: ErrorCode = ErrorCode.GOING_AWAY, retry_after_ms: int = 0, reason: str = ""
    ) -> None:
        """Tell the peer to open no new channels here and reconnect after
        ``retry_after_ms``. Incoming OPENs are refused from now on; existing channels
        continue. Close the connection when they are done (or when tired of waiting)."""
        if self._error is not None:
            return
        if not 0 <= retry_after_ms <= _U32_MAX:
            raise ValueError("retry_after_ms out of range")
        self._goaway_sent = True
        self._queue_control(GoAwayFrame(code, retry_after_ms, reason).encode(), self._conn_stats)
        logger.debug("[%s] > GOAWAY %s retry_after_ms=%d", self.name, code.name, retry_after_ms)

    def terminate(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """End the connection now: drop every channel and queued frame, queue a final
        GOAWAY with ``code``. Flush ``next_frame()`` then close the transport."""
        if self._error is not None:
            return
        self._error = code
        for channel in self._channels.values():
            channel.tx_queue = None
            channel.close_pending = False
            channel.state = State.CLOSED
        self._channels.clear()
        self._n_requested = 0
        self._credits.clear()
        self._scheduler.clear()
        self._queued = 0
        self._control = None
        self._control_bytes = 0
        self._queue_control(GoAwayFrame(code, 0, reason).encode(), self._conn_stats)
        logger.debug("[%s] > GOAWAY %s (terminating)", self.name, code.name)

    # -- input -------------------------------------------------------------------------

    def receive_message(self, data: bytes, now: float) -> list[Event]:
        """Handle one received WebSocket message. Never raises."""
        if self._error is not None:
            return []
        self._now = self._last_recv = now
        self._probing = False
        try:
            if is_data(data):  # the hot path: no frame object, the payload sliced once
                event = self._on_data(data)
            else:
                frame = decode_frame(data)
                event = _HANDLERS[type(frame)](self, frame, len(data))
            if self._control_bytes > MAX_CONTROL_BACKLOG:
                raise FrameError(ErrorCode.PROTOCOL_ERROR, "control backlog exceeded")
        except FrameError as exc:
            self._conn_stats.frames_in += 1
            self._conn_stats.bytes_in += len(data)
            return [self._fail(exc.code, str(exc))]
        except Exception:
            logger.exception("[%s] ! bug while handling a frame", self.name)
            return [self._fail(ErrorCode.INTERNAL_ERROR, "internal error")]
        return [event] if event is not None else []

    def tick(self, now: float) -> list[Event]:
        """Run timers due at ``now``: keepalive PING, dead peer, open timeouts."""
        if self._error is not None:
            return []
        self._now = now
        if self._probing:
            assert self._ping_sent is not None
            if now >= self._ping_sent + self._ping_timeout:
                return [self._fail(ErrorCode.TIMEOUT, "keepalive timeout: peer silent")]
        elif now >= self._last_recv + self._ping_idle:
            self._ping_opaque = (self._ping_opaque + 1) & 0xFFFF_FFFF_FFFF_FFFF
            self._ping_sent = now
            self._probing = True
            self._queue_control(PingFrame(self._ping_opaque).encode(), self._conn_stats)
        events: list[Event] = []
        for channel in self._opening.expired(now):
            self._move(channel, Input.TIMEOUT)
            self._remove(channel)
            self._queue_control(
                ResetFrame(channel.id, ErrorCode.TIMEOUT, "open timed out").encode(),
                channel.stats,
            )
            logger.debug("[%s] ! OPEN %d timed out", self.name, channel.id)
            events.append(ChannelRefused(channel.id, ErrorCode.TIMEOUT, "open timed out"))
        for channel in self._requested.expired(now):
            self._move(channel, Input.TIMEOUT)
            self._remove(channel)
            reason = "not answered in time"
            self._queue_control(
                RefuseFrame(channel.id, ErrorCode.TIMEOUT, reason).encode(), channel.stats
            )
            logger.debug("[%s] ! incoming OPEN %d not answered in time", self.name, channel.id)
            events.append(ChannelReset(channel.id, ErrorCode.TIMEOUT, reason, remote=False))
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must run next (``None`` once terminated). Calling tick
        early is harmless; receiving only ever moves this later, while opening a
        channel, receiving an OPEN and ticking may move it earlier."""
        if self._error is not None:
            return None
        if self._probing:
            assert self._ping_sent is not None
            deadline = self._ping_sent + self._ping_timeout
        else:
            deadline = self._last_recv + self._ping_idle
        for queue in (self._opening, self._requested):
            head = queue.peek()
            if head is not None and head < deadline:
                deadline = head
        return deadline

    # -- output ------------------------------------------------------------------------

    def next_frame(self) -> bytes | None:
        """The next frame to write, or ``None`` if nothing may be sent now: the parts
        of :meth:`next_frame_parts` joined."""
        parts = self.next_frame_parts()
        return None if parts is None else parts[0] + parts[1]

    def next_frame_parts(self) -> tuple[bytes, bytes | memoryview] | None:
        """The next frame as ``(head, body)``, to be sent as one WebSocket message
        ``head + body``; ``None`` if nothing may be sent now.

        For DATA, ``body`` is the chunk itself (a view of the message being sent, not a
        copy): an adapter that writes the two parts separately never copies a chunk.
        For every other frame ``body`` is empty.

        Order: control frames, then CREDIT, then one DATA chunk (<= MAX_CHUNK) from
        the highest-priority ready channel, round robin within a priority class.
        """
        control = self._control
        if control:
            data, stats = control.popleft()
            if not control:
                self._control = None
            size = len(data)
            self._control_bytes -= size
            stats.frames_out += 1
            stats.bytes_out += size
            return data, b""
        credits = self._credits
        while credits:
            channel = credits.pop(0)
            channel.credit_queued = False
            increment = channel.credit_to_send
            channel.credit_to_send = 0
            if increment and channel.state in _LIVE_SENDERS:
                data = encode_credit(channel.id, increment)
                channel.stats.frames_out += 1
                channel.stats.bytes_out += len(data)
                return data, b""
        scheduler = self._scheduler
        while (ready := scheduler.pop()) is not None:
            if ready.sendable:  # else reset while queued: skip
                return self._frame_from(ready)
        return None

    # -- internals ---------------------------------------------------------------------

    def _frame_from(self, channel: ChannelState) -> tuple[bytes, bytes | memoryview]:
        queue = channel.tx_queue
        body: bytes | memoryview = b""
        if queue:
            message, more = queue[0]
            offset = channel.tx_offset
            remaining = len(message) - offset
            size = min(remaining, MAX_CHUNK, channel.tx.usable)
            if size == remaining:
                queue.popleft()
                if not queue:
                    channel.tx_queue = None
                channel.tx_offset = 0
                flags = FLAG_MORE if more else 0
                body = memoryview(message)[offset:] if offset else message
            else:
                channel.tx_offset = offset + size
                flags = FLAG_MORE
                body = memoryview(message)[offset : offset + size]
            head = encode_data_header(channel.id, flags)
            channel.tx.spend(size)
            channel.tx_queued -= size
            self._queued -= size
        else:  # only the CLOSE is left
            head = CloseFrame(channel.id).encode()
            channel.close_pending = False
            logger.debug("[%s] > CLOSE %d", self.name, channel.id)
            if channel.state is State.CLOSED:
                self._remove(channel)
        channel.stats.frames_out += 1
        channel.stats.bytes_out += len(head) + len(body)
        if channel.sendable:
            self._scheduler.push(channel)
        return head, body

    def _check_alive(self) -> None:
        if self._error is not None:
            raise LocalProtocolError(self._error, "connection terminated")

    def _requested_channel(self, channel_id: int) -> ChannelState:
        self._check_alive()
        channel = self._channels.get(channel_id)
        if channel is None or channel.state is not State.REQUESTED:
            raise LocalProtocolError(
                ErrorCode.CANCELLED, f"channel {channel_id} is not awaiting an answer"
            )
        return channel

    def _move(self, channel: ChannelState, event: Input) -> None:
        """Apply a local input; LocalProtocolError if the table does not allow it."""
        state = channel.state
        target = NEXT[state][event]
        if target is None:
            raise LocalProtocolError(
                ErrorCode.PROTOCOL_ERROR, f"cannot {event.name} in {state.name}"
            )
        self._leave(channel, state)
        channel.state = target

    def _leave(self, channel: ChannelState, state: State) -> None:
        if state is State.REQUESTED:
            self._n_requested -= 1
        if state is State.OPENING or state is State.REQUESTED:
            channel.open_deadline = None

    def _remove(self, channel: ChannelState) -> None:
        """Forget a channel: its id now only marks late frames to drop."""
        self._leave(channel, channel.state)
        channel.state = State.CLOSED
        self._queued -= channel.tx_queued
        channel.tx_queued = 0
        channel.tx_queue = None
        channel.close_pending = False
        channel.rx_parts = []
        channel.rx_size = 0
        if self._channels.pop(channel.id, None) is not None and channel.priority in INTERACTIVE:
            self._interactive -= 1
            if not self._interactive:
                self._cap_all()

    def _set_priority(self, channel: ChannelState, priority: Priority) -> None:
        """Give a live channel its priority (once, at OPEN or ACCEPT) and keep the
        count of interactive channels that caps BULK data in flight."""
        channel.priority = priority
        if priority in INTERACTIVE:
            self._interactive += 1
            if self._interactive == 1:
                self._cap_all()
        else:
            self._cap(channel)

    def _cap(self, channel: ChannelState) -> None:
        """BULK sends at most ``Settings.bulk_shared_in_flight`` ahead of credit while an
        interactive channel is live, else up to the peer's window (decision 0008)."""
        if channel.priority is Priority.BULK:
            channel.tx.cap(self.settings.bulk_shared_in_flight if self._interactive else None)

    def _cap_all(self) -> None:
        for channel in self._channels.values():
            self._cap(channel)
            if channel.sendable:  # the cap was lifted: credit held back is usable again
                self._scheduler.push(channel)

    def _queue_control(self, data: bytes, stats: KindStats) -> None:
        control = self._control
        if control is None:
            control = self._control = deque()
        control.append((data, stats))
        self._control_bytes += len(data)

    def _return_credit(self, channel: ChannelState) -> None:
        if channel.state not in _LIVE_SENDERS:
            return
        # A chunk-mode consumer takes partial messages: no deadlock to avoid by early credit.
        increment = channel.rx.credit_due(0 if channel.chunked else channel.rx_size)
        if increment:
            channel.credit_to_send += increment
            if not channel.credit_queued:
                channel.credit_queued = True
                self._credits.append(channel)

    def _fail(self, code: ErrorCode, detail: str) -> ConnectionFailed:
        logger.warning("[%s] ! connection failed: %s (%s)", self.name, code.name, detail)
        self.terminate(code, _wire_reason(code))
        return ConnectionFailed(code, detail)

    def _channel_error(self, channel: ChannelState, code: ErrorCode, reason: str) -> ChannelReset:
        """The peer broke a channel rule: reset that channel only."""
        logger.info("[%s] ! resetting channel %d: %s", self.name, channel.id, reason)
        self._remove(channel)
        self._queue_control(ResetFrame(channel.id, code, reason).encode(), channel.stats)
        return ChannelReset(channel.id, code, reason, remote=False)

    def _lookup(self, channel_id: int, size: int) -> ChannelState | None:
        """The live channel, or None for a late frame to drop; a frame for a channel
        that was never opened is a connection error."""
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel.stats.frames_in += 1
            channel.stats.bytes_in += size
            return channel
        if channel_id & 1 == self._peer_parity:
            opened = channel_id <= self._last_peer_id
        else:
            opened = channel_id < self._next_id
        if not opened:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "frame for a channel never opened")
        self._conn_stats.frames_in += 1
        self._conn_stats.bytes_in += size
        return None

    def _on_data(self, data: bytes) -> Event | None:
        channel_id, more = decode_data_header(data)
        size = len(data)
        channel = self._lookup(channel_id, size)
        if channel is None or channel.state is State.CLOSED:
            return None
        if NEXT[channel.state][Input.RECV_DATA] is None:
            return self._channel_error(channel, ErrorCode.PROTOCOL_ERROR, "unexpected DATA")
        length = size - HEADER_SIZE
        if not channel.rx.receive(length):
            return self._channel_error(channel, ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond credit")
        total = channel.rx_size + length
        if total > channel.max_message:
            return self._channel_error(
                channel, ErrorCode.MESSAGE_TOO_LARGE, "message exceeds max_message"
            )
        if channel.chunked:  # forwarded as it comes: count the message, keep nothing
            channel.rx_size = total if more else 0
            return ChunkReceived(channel_id, memoryview(data)[HEADER_SIZE:], more)
        if more:  # views: the parts are copied once, by the join
            channel.rx_parts.append(memoryview(data)[HEADER_SIZE:])
            channel.rx_size = total
            self._return_credit(channel)
            return None
        if channel.rx_parts:
            channel.rx_parts.append(memoryview(data)[HEADER_SIZE:])
            payload = b"".join(channel.rx_parts)
            channel.rx_parts = []
            channel.rx_size = 0
        else:
            payload = data[HEADER_SIZE:]
        return MessageReceived(channel.id, payload)

    def _on_open(self, frame: OpenFrame, size: int) -> Event | None:
        channel_id = frame.channel_id
        if channel_id & 1 != self._peer_parity or channel_id <= self._last_peer_id:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "OPEN with a bad channel id")
        self._last_peer_id = channel_id
        meta = frame.meta
        kind = meta.pop("kind", None)
        if not isinstance(kind, str) or not KIND_PATTERN.fullmatch(kind):
            return self._refuse_now(channel_id, size, None, ErrorCode.BAD_REQUEST, "bad kind")
        stats = self.stats.for_kind(kind)
        settings = self.settings
        if self._goaway_sent:
            return self._refuse_now(channel_id, size, stats, ErrorCode.GOING_AWAY, "going away")
        if len(self._channels) >= settings.max_channels:
            return self._refuse_now(
                channel_id, size, stats, ErrorCode.TOO_MANY_CHANNELS, "too many channels"
            )
        if self._n_requested >= settings.max_pending_opens:
            return self._refuse_now(
                channel_id, size, stats, ErrorCode.TOO_MANY_CHANNELS, "too many pending opens"
            )
        stats.frames_in += 1
        stats.bytes_in += size
        channel = ChannelState(
            channel_id,
            kind,
            State.IDLE,
            stats,
            window=settings.window,
            max_message=settings.max_message,
        )
        requested = NEXT[State.IDLE][Input.RECV_OPEN]
        assert requested is State.REQUESTED
        channel.state = requested
        channel.tx = SendCredit(frame.window)
        channel.peer_max_message = frame.max_message
        self._channels[channel_id] = channel
        self._n_requested += 1
        self._requested.push(self._now + settings.accept_timeout, channel)
        logger.debug("[%s] < OPEN %d kind=%s", self.name, channel_id, kind)
        return ChannelRequested(channel_id, kind, meta)

    def _refuse_now(
        self,
        channel_id: int,
        size: int,
        stats: KindStats | None,
        code: ErrorCode,
        reason: str,
    ) -> Event | None:
        """REFUSE an OPEN without creating the channel; there is no event to report."""
        stats = stats or self._conn_stats
        stats.frames_in += 1
        stats.bytes_in += size
        self._queue_control(RefuseFrame(channel_id, code, reason).encode(), stats)
        logger.debug("[%s] > REFUSE %d %s (%s)", self.name, channel_id, code.name, reason)
        return None

    def _on_accept(self, frame: AcceptFrame, size: int) -> Event | None:
        channel = self._lookup(frame.channel_id, size)
        if channel is None or channel.state is State.CLOSED:
            return None
        target = NEXT[channel.state][Input.RECV_ACCEPT]
        if target is None:
            return self._channel_error(channel, ErrorCode.PROTOCOL_ERROR, "unexpected ACCEPT")
        self._leave(channel, channel.state)
        channel.state = target
        channel.tx = SendCredit(frame.window)
        self._cap(channel)
        channel.peer_max_message = frame.max_message
        logger.debug("[%s] < ACCEPT %d", self.name, channel.id)
        return ChannelAccepted(channel.id, frame.meta)

    def _on_refuse(self, frame: RefuseFrame, size: int) -> Event | None:
        channel = self._lookup(frame.channel_id, size)
        if channel is None or channel.state is State.CLOSED:
            return None
        if NEXT[channel.state][Input.RECV_REFUSE] is None:
            return self._channel_error(channel, ErrorCode.PROTOCOL_ERROR, "unexpected REFUSE")
        self._remove(channel)
        logger.debug("[%s] < REFUSE %d %s", self.name, channel.id, frame.code.name)
        return ChannelRefused(channel.id, frame.code, frame.reason)

    def _on_credit(self, frame: CreditFrame, size: int) -> Event | None:
        channel = self._lookup(frame.channel_id, size)
        if channel is None:
            return None
        if NEXT[channel.state][Input.RECV_CREDIT] is None:
            return self._channel_error(channel, ErrorCode.PROTOCOL_ERROR, "unexpected CREDIT")
        if not channel.tx.grant(frame.increment):
            return self._channel_error(
                channel, ErrorCode.FLOW_CONTROL_ERROR, "credit beyond the window"
            )
        if channel.sendable:
            self._scheduler.push(channel)
        return None

    def _on_close(self, frame: CloseFrame, size: int) -> Event | None:
        channel = self._lookup(frame.channel_id, size)
        if channel is None or channel.state is State.CLOSED:
            return None
        target = NEXT[channel.state][Input.RECV_CLOSE]
        if target is None:
            return self._channel_error(channel, ErrorCode.PROTOCOL_ERROR, "unexpected CLOSE")
        if channel.rx_size:
            return self._channel_error(channel, ErrorCode.PROTOCOL_ERROR, "CLOSE inside a message")
        channel.state = target
        channel.remote_closed = True
        if target is State.CLOSED and not channel.sendable:
            self._remove(channel)
        logger.debug("[%s] < CLOSE %d", self.name, channel.id)
        return ChannelEnded(channel.id)

    def _on_reset(self, frame: ResetFrame, size: int) -> Event | None:
        channel = self._lookup(frame.channel_id, size)
        if channel is None:
            return None
        if NEXT[channel.state][Input.RECV_RESET] is None:
            return self._channel_error(channel, ErrorCode.PROTOCOL_ERROR, "unexpected RESET")
        was_closed = channel.state is State.CLOSED
        self._remove(channel)
        logger.debug("[%s] < RESET %d %s", self.name, channel.id, frame.code.name)
        if was_closed:  # both sides had closed; our tail is discarded, nothing to report
            return None
        return ChannelReset(channel.id, frame.code, frame.reason, remote=True)

    def _on_ping(self, frame: PingFrame, size: int) -> Event | None:
        self._count_connection_frame(size)
        self._queue_control(PongFrame(frame.opaque).encode(), self._conn_stats)
        return None

    def _on_pong(self, frame: PongFrame, size: int) -> Event | None:
        self._count_connection_frame(size)
        if self._ping_sent is not None and frame.opaque == self._ping_opaque:
            self.rtt = self._now - self._ping_sent
            self._ping_sent = None
        return None

    def _on_goaway(self, frame: GoAwayFrame, size: int) -> Event | None:
        self._count_connection_frame(size)
        self._goaway_received = True
        logger.debug(
            "[%s] < GOAWAY %s retry_after_ms=%d", self.name, frame.code.name, frame.retry_after_ms
        )
        return GoAwayReceived(frame.code, frame.retry_after_ms, frame.reason)

    def _count_connection_frame(self, size: int) -> None:
        self._conn_stats.frames_in += 1
        self._conn_stats.bytes_in += size


_HANDLERS: Final[dict[type, Callable[[Connection, Any, int], Event | None]]] = {
    OpenFrame: Connection._on_open,
    AcceptFrame: Connection._on_accept,
    RefuseFrame: Connection._on_refuse,
    CreditFrame: Connection._on_credit,
    CloseFrame: Connection._on_close,
    ResetFrame: Connection._on_reset,
    PingFrame: Connection._on_ping,
    PongFrame: Connection._on_pong,
    GoAwayFrame: Connection._on_goaway,
}
