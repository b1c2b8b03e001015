"""The device side of a desktop stream: capture -> damage -> encode -> pace -> send.

The streamer knows nothing about tunnels or sessions: it takes a ``send(bytes)``
coroutine function and a ``ready()`` coroutine function that returns once the channel
can take another update without it queueing behind an unsent one (for a tunnel
channel: its send backlog has drained). Everything blocking -- the grab, the diff,
the encoders, the cursor query -- runs on one worker thread, always the same one
(``mss`` and python-xlib connections are not for sharing between threads), and the
event loop only waits, paces and sends. A thread rather than a process because the
heavy parts (MIT-SHM copy, ``memcmp``, libjpeg-turbo, libwebp) release the GIL, and a
process would have to ship every 4 MB frame or own the X connection itself; the
measurement is in ``docs/desktop-encoding.md``.

Each pass: wait for ``ready()``; wait for the pacer (fps cap, CPU budget, idle
backoff) unless poked; grab the watched monitor; diff against the last frame *sent*;
encode and send the changed rectangles as one update, then the cursor position or
shape if they changed. An unchanged screen sends nothing at all.

When the source offers a :class:`~desktop.xdamage.DamageWatch` (its ``damage``
attribute: ``MssSource`` on an X server with DAMAGE), capture is event-driven: the loop
sleeps until the watch reports drawing (its socket becomes readable), then -- within
the fps cap and CPU budget -- grabs and compares only the reported areas when they are
small (else the whole monitor, as when polling). Drawing while
the channel is busy accumulates in the watch and goes out as one update. Without
drawing, a pass every ``1 / idle_fps`` seconds (and after injected input) only looks
at the cursor, and one every ``SWEEP_INTERVAL`` compares the whole monitor anyway.
Without a watch, the screen is polled as described above.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from . import wire
from .capture import Frame, Monitor, ScreenSource
from .cursor import CursorSource
from .damage import Damage, DamageTracker, bounding_box
from .encode import QUALITY_DEFAULT, Encoder, QualityController
from .geometry import Rect
from .pacing import LinkEstimator, Pacer, PacerSettings
from .xdamage import DamageWatch

logger = logging.getLogger(__name__)

Send = Callable[[bytes], Awaitable[None]]
Ready = Callable[[], Awaitable[None]]

_I16 = (-0x8000, 0x7FFF)

AREA_GRAB_MAX_PIXELS: Final = 256 * 1024
"""Damage of at most this many pixels is grabbed and compared alone (a typed character:
~0.3 ms instead of ~3 ms for a 1920x1080 grab, measured). Larger damage takes the
whole-monitor path, which also finds scrolled content."""

SWEEP_INTERVAL: Final = 1.0
"""With a damage watch, the whole monitor is still compared this often: a safety net
for drawing the X server does not report (seen on Xvfb: about one change in a few
hundred never produced a damage event). At 1920x1080 it costs ~0.3 % of a core."""

AREA_GRABS_MAX: Final = 16
"""Up to this many drawn rectangles are grabbed one by one (a round trip each, ~0.1 ms);
more are grabbed as their bounding box."""


@dataclass(frozen=True, slots=True)
class StreamerSettings:
    """The device's configuration of a stream (R32 limits live in ``pacer``).

    ``monitor`` ``None`` = the primary monitor (or the first). ``quality`` fixes the
    JPEG quality; ``None`` adapts it so updates fit ``target_bps`` and what the link
    is measured to carry, whichever is lower.
    """

    pacer: PacerSettings = field(default_factory=PacerSettings)
    monitor: int | None = None
    quality: int | None = None
    target_bps: float | None = None


@dataclass(slots=True)
class StreamerStats:
    """Counters for the status bar, the audit record (byte counts) and the benchmark."""

    captures: int = 0
    updates: int = 0
    messages: int = 0
    bytes_sent: int = 0
    cpu_seconds: float = 0.0
    quality: int = QUALITY_DEFAULT
    link_bps: float | None = None


@dataclass(slots=True)
class _Pass:
    """What one worker pass produced."""

    messages: list[bytes]
    cpu: float
    update_bytes: int
    had_photo: bool
    changed: bool
    grabbed: bool


class Streamer:
    """Streams one screen to one viewer; see the module docstring.

    ``source`` and ``cursor`` are used from the streamer's worker thread only, while
    :meth:`run` runs; the caller closes them after it returned. Call the control
    methods (:meth:`poke`, :meth:`request_refresh`, :meth:`select_monitor`,
    :meth:`apply`) from the event loop.
    """

    def __init__(
        self,
        source: ScreenSource,
        send: Send,
        ready: Ready,
        *,
        cursor: CursorSource | None = None,
        settings: StreamerSettings | None = None,
    ) -> None:
        self._source = source
        self._watch: DamageWatch | None = getattr(source, "damage", None)
        self._send = send
        self._ready = ready
        self._cursor = cursor
        self.settings = settings or StreamerSettings()
        self.stats = StreamerStats()
        self._pacer = Pacer(self.settings.pacer, time.monotonic())
        self._link = LinkEstimator()
        self._quality = QualityController(self.settings.quality or QUALITY_DEFAULT)
        self._fixed_quality = self.settings.quality
        self._wake = asyncio.Event()
        self._monitors: list[Monitor] = []
        self._index = 0
        self._refresh = False
        self._drawn = True  # damage reported (or not yet asked): the next pass grabs
        self._poked = False
        self._last_pass = 0.0
        # Worker-thread state: touched only inside _step.
        self._tracker = DamageTracker()
        self._encoder = Encoder()
        self._seq = 0
        self._streamed_index = -1
        self._last_sweep = time.monotonic()
        self._cursor_sent: tuple[int, int] | None = None
        self._shape_sent = 0

    # -- control (event loop) --------------------------------------------------------

    @property
    def monitor(self) -> Monitor | None:
        """The monitor being streamed (input coordinates are relative to it)."""
        return self._monitors[self._index] if self._monitors else None

    @property
    def max_fps(self) -> float:
        """The frame-rate cap in force (the device's, or a viewer's lower wish)."""
        return self._pacer.max_fps

    def poke(self) -> None:
        """The screen is about to change (input was injected): capture at full rate now."""
        self._pacer.poke(time.monotonic())
        self._poked = True
        self._wake.set()

    def request_refresh(self) -> None:
        """Send the whole screen next (the viewer lost its picture)."""
        self._refresh = True
        self.poke()

    def select_monitor(self, index: int) -> bool:
        """Stream monitor ``index`` from the next update on; ``False`` if there is none."""
        if not 0 <= index < len(self._monitors):
            return False
        self._index = index
        self.poke()
        return True

    def apply(self, wish: wire.StreamSettings) -> None:
        """A viewer's settings, within the device's caps."""
        self._pacer.limit_fps(wish.max_fps)
        self._fixed_quality = wish.quality or self.settings.quality
        self.poke()

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Stream until cancelled or until ``send``/``ready``/the source fail (the
        exception propagates; the caller ends the session)."""
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1, thread_name_prefix="desktop-capture")
        watch = self._watch
        try:
            self._monitors = await loop.run_in_executor(pool, self._source.monitors)
            self._index = self._initial_monitor()
            await self._emit([self._monitor_list()])
            pending = 0  # bytes of the last update, until the channel drained it
            sent_at = loop.time()
            while True:
                await self._ready()
                if pending:
                    self._link.record(pending, loop.time() - sent_at)
                    pending = 0
                await self._pace()
                start = time.monotonic()
                index, refresh, quality = self._index, self._refresh, self._current_quality()
                self._refresh = self._drawn = self._poked = False
                if watch is not None:
                    loop.remove_reader(watch.fileno())  # the worker reads the connection
                result = await loop.run_in_executor(pool, self._step, index, refresh, quality)
                if watch is not None:
                    loop.add_reader(watch.fileno(), self._on_damage)
                self._last_pass = start
                self._account(start, result)
                if result.messages:
                    sent_at = loop.time()
                    await self._emit(result.messages)
                    pending = result.update_bytes
        finally:
            if watch is not None:
                loop.remove_reader(watch.fileno())
            # Let an encode in flight finish off the loop before the caller closes the
            # source it is using; never block the loop on it.
            await asyncio.shield(loop.run_in_executor(None, pool.shutdown))

    def _on_damage(self) -> None:
        """The watch's connection is readable: something was drawn."""
        assert self._watch is not None
        asyncio.get_running_loop().remove_reader(self._watch.fileno())  # until the pass read it
        self._drawn = True
        self._pacer.poke(time.monotonic())
        self._wake.set()

    async def _pace(self) -> None:
        """Wait until the pacer allows the next capture; a refresh request skips the wait.
        With a damage watch, a pass without drawing or input is due only for the cursor,
        at the idle rate."""
        while not self._refresh:
            now = time.monotonic()
            if self._watch is None or self._drawn or self._poked:
                due = self._pacer.next_capture(now)
            else:
                due = self._last_pass + 1.0 / self._pacer.settings.idle_fps
            if due <= now:
                return
            self._wake.clear()
            try:
                async with asyncio.timeout(due - now):
                    await self._wake.wait()
            except TimeoutError:
                return

    async def _emit(self, messages: list[bytes]) -> None:
        for message in messages:
            await self._send(message)
            self.stats.messages += 1
            self.stats.bytes_sent += len(message)

    def _account(self, start: float, result: _Pass) -> None:
        if result.grabbed:  # a cursor-only pass costs next to nothing: no frame slot
            self._pacer.captured(start, result.cpu, result.changed)
        stats = self.stats
        stats.captures += 1
        stats.cpu_seconds += result.cpu
        if result.update_bytes:
            stats.updates += 1
        stats.link_bps = self._link.bps
        if self._fixed_quality is None:
            target = min((b for b in (self.settings.target_bps, self._link.bps) if b), default=None)
            if target:
                interval = self._pacer.active_interval
                budget = target / 8 * interval
                cpu_bound = interval > 1.0 / self._pacer.max_fps
                self._quality.update(result.update_bytes, budget, result.had_photo, cpu_bound)
        stats.quality = self._current_quality()

    def _current_quality(self) -> int:
        return self._fixed_quality or self._quality.quality

    def _initial_monitor(self) -> int:
        wanted = self.settings.monitor
        if wanted is not None and 0 <= wanted < len(self._monitors):
            return wanted
        primary = [m.index for m in self._monitors[1:] if m.primary]
        return primary[0] if primary else min(1, len(self._monitors) - 1)

    def _monitor_list(self) -> bytes:
        entries = tuple(
            wire.MonitorEntry(m.left, m.top, m.width, m.height, m.primary)
            for m in self._monitors[: wire.MAX_MONITORS]
        )
        return wire.MonitorList(entries, self._index).encode()

    # -- the worker thread -----------------------------------------------------------

    def _step(self, index: int, refresh: bool, quality: int) -> _Pass:
        """One capture pass on the worker thread; returns the messages to send."""
        cpu_start = time.thread_time()
        started = time.monotonic()
        monitor = self._monitors[index]
        drawn: list[Rect] | None = None  # None: unknown, look everywhere
        if self._watch is not None:
            drawn = _clip(self._watch.take(), monitor)  # before the grab: see xdamage
            if started - self._last_sweep >= SWEEP_INTERVAL:
                drawn = None
        if drawn is None:
            self._last_sweep = started
        if refresh or index != self._streamed_index:
            self._tracker.reset()
            self._streamed_index = index
            self._cursor_sent = None
            drawn = None
        messages: list[bytes] = []
        had_photo = False
        grabbed = drawn is None or bool(drawn)
        if grabbed:
            frame, damage = self._capture(index, monitor, drawn)
            monitor = frame.monitor
            if damage.copy or damage.rects:
                messages, had_photo = self._update(index, frame, damage, quality)
        update_bytes = sum(len(m) for m in messages)
        if self._cursor is not None:
            messages.extend(self._cursor_messages(monitor))
        return _Pass(
            messages=messages,
            cpu=time.thread_time() - cpu_start,
            update_bytes=update_bytes,
            had_photo=had_photo,
            changed=bool(messages),
            grabbed=grabbed,
        )

    def _capture(
        self, index: int, monitor: Monitor, drawn: list[Rect] | None
    ) -> tuple[Frame, Damage]:
        """Grab and diff: only the drawn areas when they are small and the source can,
        else the whole monitor."""
        picture = self._tracker.picture
        grab_area = getattr(self._source, "grab_area", None)
        areas = _grab_areas(drawn) if drawn else None
        if areas is not None and picture is not None and grab_area is not None:
            rects = []
            for area in areas:
                rects.extend(self._tracker.update_area(grab_area(index, area), area).rects)
            return Frame(monitor, *self._tracker.size, picture), Damage(None, rects)
        frame = self._source.grab(index)
        return frame, self._tracker.update(frame.pixels, frame.width, frame.height)

    def _update(
        self, index: int, frame: Frame, damage: Damage, quality: int
    ) -> tuple[list[bytes], bool]:
        """The FRAME messages of one update, and whether it has photographic parts."""
        self._encoder.quality = quality
        encoded = self._encoder.encode(frame.pixels, frame.width, frame.height, damage.rects)
        if damage.copy is not None:  # first: it reads the picture before the rest lands
            rect, src_x, src_y = damage.copy
            copy = wire.EncodedRect(rect, wire.Codec.COPY, wire.copy_payload(src_x, src_y))
            encoded.insert(0, copy)
        self._seq = (self._seq + 1) & 0xFFFF_FFFF
        full = damage.rects == [Rect(0, 0, frame.width, frame.height)]
        messages = wire.frame_messages(self._seq, index, frame.width, frame.height, encoded, full)
        logger.debug(
            "> update %d: %d rects, %d bytes, q=%d",
            self._seq,
            len(encoded),
            sum(len(m) for m in messages),
            quality,
        )
        return messages, any(r.codec is wire.Codec.JPEG for r in encoded)

    def _cursor_messages(self, monitor: Monitor) -> list[bytes]:
        assert self._cursor is not None
        state = self._cursor.poll()
        out = []
        if state.serial and state.serial != self._shape_sent:
            self._shape_sent = state.serial
            image = self._cursor.image()
            if image is not None:
                shape = wire.CursorShape(
                    image.serial, image.hot_x, image.hot_y, image.width, image.height, image.rgba
                )
                try:
                    out.append(shape.encode())
                except ValueError:  # e.g. larger than MAX_CURSOR_SIDE: the viewer keeps its own
                    logger.debug("! cursor %dx%d not sent", image.width, image.height)
        lo, hi = _I16
        position = (
            max(lo, min(hi, state.x - monitor.left)),
            max(lo, min(hi, state.y - monitor.top)),
        )
        if position != self._cursor_sent:
            out.append(wire.CursorPosition(*position).encode())
            self._cursor_sent = position
        return out


def _clip(drawn: list[Rect], monitor: Monitor) -> list[Rect]:
    """Desktop-coordinate damage as rectangles of ``monitor``'s frame (``[]``: none on it)."""
    out = []
    for r in drawn:
        x0, y0 = max(r.x, monitor.left), max(r.y, monitor.top)
        x1 = min(r.right, monitor.left + monitor.width)
        y1 = min(r.bottom, monitor.top + monitor.height)
        if x0 < x1 and y0 < y1:
            out.append(Rect(x0 - monitor.left, y0 - monitor.top, x1 - x0, y1 - y0))
    return out


def _grab_areas(drawn: list[Rect]) -> list[Rect] | None:
    """What to grab for ``drawn`` alone: the rectangles when few, else their bounding
    box; ``None`` when that is too large (grab the whole monitor)."""
    if len(drawn) <= AREA_GRABS_MAX and sum(r.area for r in drawn) <= AREA_GRAB_MAX_PIXELS:
        return drawn
    box = bounding_box(drawn)
    return [box] if box.area <= AREA_GRAB_MAX_PIXELS else None
