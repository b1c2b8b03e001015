"""The streamer end to end on the real X server: what a viewer paints is the screen,
an idle screen sends nothing, and a slow viewer gets fewer, fresher updates with never
more than one queued."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from PIL import Image

from desktop import wire
from desktop.capture import Frame, Monitor, MssSource
from desktop.cursor import CursorState, XCursorSource
from desktop.encode import paint, region_image
from desktop.geometry import Rect
from desktop.pacing import PacerSettings
from desktop.streamer import Streamer, StreamerSettings
from tests.conftest import UNIT

from .conftest import App

FAST = StreamerSettings(pacer=PacerSettings(max_fps=60, idle_fps=60, cpu_budget=1.0))
"""Tests poll at full rate so that 'N captures happened' comes quickly."""


class Count:
    """A counter the worker thread bumps and a test can wait on ("N more")."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, threading.Event]] = []

    def bump(self) -> None:
        with self._lock:
            self.n += 1
            for target, event in self._waiters:
                if self.n >= target:
                    event.set()

    async def more(self, n: int) -> None:
        event = threading.Event()
        with self._lock:
            self._waiters.append((self.n + n, event))
        assert await asyncio.to_thread(event.wait, 10 * UNIT), "the streamer stopped"


class CountingSource:
    """The real source, counting grabs so a test can wait for "N more captures".
    ``damage``: offer the X DAMAGE watch (event-driven capture) or not (polling)."""

    def __init__(self, display: str, *, damage: bool = False) -> None:
        self.inner = MssSource(display, watch_damage=damage)
        self.damage = self.inner.damage
        self.grab_count = Count()
        self.area_grabs = 0

    @property
    def grabs(self) -> int:
        return self.grab_count.n

    def monitors(self) -> list[Monitor]:
        return self.inner.monitors()

    def grab(self, index: int) -> Frame:
        frame = self.inner.grab(index)
        self.grab_count.bump()
        return frame

    def grab_area(self, index: int, area: Rect) -> bytes | bytearray:
        self.area_grabs += 1
        return self.inner.grab_area(index, area)

    async def more_grabs(self, n: int) -> None:
        await self.grab_count.more(n)

    def close(self) -> None:
        self.inner.close()


class CountingCursor(XCursorSource):
    """The real cursor source, counting polls: every streamer pass makes one."""

    def __init__(self, display: str) -> None:
        super().__init__(display)
        self.polls = Count()

    def poll(self) -> CursorState:
        self.polls.bump()
        return super().poll()


@dataclass
class Viewer:
    """Decodes what the streamer sends and paints it, like the browser viewer will."""

    canvas: Image.Image | None = None
    monitors: wire.MonitorList | None = None
    updates: list[list[wire.FrameUpdate]] = field(default_factory=list)
    cursor: list[wire.DeviceMessage] = field(default_factory=list)
    _parts: list[wire.FrameUpdate] = field(default_factory=list)

    def take(self, data: bytes) -> None:
        message = wire.decode_device_message(data)
        if isinstance(message, wire.MonitorList):
            self.monitors = message
        elif isinstance(message, wire.FrameUpdate):
            if self.canvas is None or self.canvas.size != (message.width, message.height):
                assert message.full, "the first update of a screen size must be full"
                self.canvas = Image.new("RGB", (message.width, message.height))
            paint(self.canvas, message.rects)
            self._parts.append(message)
            if message.final:
                self.updates.append(self._parts)
                self._parts = []
        else:
            self.cursor.append(message)


def screen(display: str) -> Image.Image:
    with contextlib.closing(MssSource(display)) as source:
        frame = source.grab(1)
    return region_image(frame.pixels, frame.width, Rect(0, 0, frame.width, frame.height))


@contextlib.asynccontextmanager
async def streaming(
    source: CountingSource,
    send: Callable[[bytes], object],
    ready: Callable[[], object],
    display: str,
    settings: StreamerSettings = FAST,
    cursor: XCursorSource | None = None,
) -> AsyncIterator[Streamer]:
    cursor = cursor or XCursorSource(display)
    streamer = Streamer(source, send, ready, cursor=cursor, settings=settings)  # type: ignore[arg-type]
    task = asyncio.create_task(streamer.run())
    try:
        yield streamer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        source.close()
        cursor.close()


@pytest.mark.parametrize("damage", [False, True], ids=["polling", "xdamage"])
async def test_viewer_paints_exactly_the_screen_and_then_only_changes(
    xdisplay: str, app: App, damage: bool
) -> None:
    viewer = Viewer()
    got_update = asyncio.Event()

    async def send(data: bytes) -> None:
        viewer.take(data)
        if viewer.updates:
            got_update.set()

    async def ready() -> None:
        pass

    source = CountingSource(xdisplay, damage=damage)
    assert (source.damage is not None) == damage
    async with streaming(source, send, ready, xdisplay) as streamer:
        await asyncio.wait_for(got_update.wait(), 10 * UNIT)
        assert viewer.monitors is not None and viewer.monitors.current == 1
        assert streamer.monitor is not None and streamer.monitor.index == 1
        first = viewer.updates[0]
        assert first[-1].full and first[-1].final
        assert viewer.canvas is not None and viewer.canvas.tobytes() == screen(xdisplay).tobytes()
        assert any(isinstance(m, wire.CursorPosition) for m in viewer.cursor)
        assert any(isinstance(m, wire.CursorShape) for m in viewer.cursor)

        got_update.clear()
        viewer.updates.clear()
        colour = "#abcdef" if damage else "#fedcba"  # a change in both runs
        await asyncio.to_thread(app.fill, 650, 460, 30, 30, colour)  # inside tile (10, 7)
        await asyncio.wait_for(got_update.wait(), 10 * UNIT)
        rects = [r.rect for part in viewer.updates[0] for r in part.rects]
        # Trimmed to exactly the changed pixels.
        assert rects == [Rect(650, 460, 30, 30)]
        assert not viewer.updates[0][-1].full
        assert viewer.canvas.tobytes() == screen(xdisplay).tobytes()

        # A refresh request resends everything.
        got_update.clear()
        viewer.updates.clear()
        streamer.request_refresh()
        await asyncio.wait_for(got_update.wait(), 10 * UNIT)
        assert viewer.updates[0][-1].full


async def test_idle_screen_sends_nothing(xdisplay: str, app: App) -> None:
    sent: list[bytes] = []
    first = asyncio.Event()

    async def send(data: bytes) -> None:
        sent.append(data)
        if isinstance(wire.decode_device_message(data), wire.FrameUpdate):
            first.set()

    async def ready() -> None:
        pass

    source = CountingSource(xdisplay)
    async with streaming(source, send, ready, xdisplay) as streamer:
        await asyncio.wait_for(first.wait(), 10 * UNIT)
        await source.more_grabs(2)  # the initial update and cursor are out
        before = len(sent)
        await source.more_grabs(20)
        assert len(sent) == before
        assert streamer.stats.captures >= 20


async def test_with_damage_an_idle_screen_is_never_grabbed_and_a_drawing_is(
    xdisplay: str, app: App
) -> None:
    viewer = Viewer()
    got_update = asyncio.Event()

    async def send(data: bytes) -> None:
        viewer.take(data)
        if viewer.updates:
            got_update.set()

    async def ready() -> None:
        pass

    source = CountingSource(xdisplay, damage=True)
    cursor = CountingCursor(xdisplay)
    async with streaming(source, send, ready, xdisplay, cursor=cursor) as streamer:
        await asyncio.wait_for(got_update.wait(), 10 * UNIT)
        grabs, sent = source.grabs, streamer.stats.messages
        await cursor.polls.more(10)  # ten passes (at idle_fps) looked at the cursor only
        assert source.grabs == grabs
        assert streamer.stats.messages == sent

        got_update.clear()
        viewer.updates.clear()
        await asyncio.to_thread(app.fill, 300, 500, 20, 10, "#0a0b0c")  # inside tile (4, 7)
        await asyncio.wait_for(got_update.wait(), 10 * UNIT)
        rects = [r.rect for part in viewer.updates[0] for r in part.rects]
        assert rects == [Rect(300, 500, 20, 10)]
        assert viewer.canvas is not None and viewer.canvas.tobytes() == screen(xdisplay).tobytes()
        assert source.area_grabs > 0  # just the drawn area, not the whole screen


@pytest.mark.parametrize("damage", [False, True], ids=["polling", "xdamage"])
async def test_slow_viewer_gets_fewer_fresher_updates_never_a_queue(
    xdisplay: str, app: App, damage: bool
) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    drained = asyncio.Event()
    drained.set()
    viewer = Viewer()
    worst_backlog = 0  # distinct updates waiting in the queue when a new message is sent
    backlog_seqs: list[int] = []

    async def send(data: bytes) -> None:
        nonlocal worst_backlog
        message = wire.decode_device_message(data)
        if isinstance(message, wire.FrameUpdate):
            backlog_seqs.append(message.seq)
            worst_backlog = max(worst_backlog, len(set(backlog_seqs)))
        queue.put_nowait(data)
        drained.clear()

    async def ready() -> None:
        await drained.wait()

    async def slow_consumer() -> None:
        while True:
            data = await queue.get()
            await asyncio.sleep(0.15 * UNIT)  # the slow link/browser, not synchronisation
            viewer.take(data)
            if viewer.canvas is not None and viewer.canvas.getpixel((80, 650)) == final:
                shows_final.set()
            message = wire.decode_device_message(data)
            if isinstance(message, wire.FrameUpdate) and message.seq in backlog_seqs:
                backlog_seqs.remove(message.seq)
            if queue.empty():
                drained.set()

    colours = [f"#{i:02x}{255 - i:02x}40" for i in range(0, 256, 4)]
    final = tuple(int(colours[-1][i : i + 2], 16) for i in (1, 3, 5))
    shows_final = asyncio.Event()
    fills = 0

    def change_screen() -> None:
        nonlocal fills
        for colour in colours:
            app.fill(64, 640, 64, 64, colour)
            fills += 1

    source = CountingSource(xdisplay, damage=damage)
    consumer = asyncio.create_task(slow_consumer())
    try:
        async with streaming(source, send, ready, xdisplay) as streamer:
            await asyncio.to_thread(change_screen)
            shows_final.clear()  # only a paint after the last change counts
            if viewer.canvas is not None and viewer.canvas.getpixel((80, 650)) == final:
                shows_final.set()
            await asyncio.wait_for(shows_final.wait(), 10 * UNIT)
            assert worst_backlog <= 1
            updates = streamer.stats.updates
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    assert fills == len(colours)
    # The screen changed 64 times; the slow viewer got far fewer, coalesced updates,
    # and the last one it painted is the screen's final state.
    assert updates < len(colours) / 2


async def test_monitor_selection(xdisplay: str, app: App) -> None:
    viewer = Viewer()
    got_update = asyncio.Event()

    async def send(data: bytes) -> None:
        viewer.take(data)
        if viewer.updates:
            got_update.set()

    async def ready() -> None:
        pass

    source = CountingSource(xdisplay)
    async with streaming(source, send, ready, xdisplay) as streamer:
        await asyncio.wait_for(got_update.wait(), 10 * UNIT)
        assert not streamer.select_monitor(9)
        got_update.clear()
        viewer.updates.clear()
        assert streamer.select_monitor(0)
        await asyncio.wait_for(got_update.wait(), 10 * UNIT)
        assert viewer.updates[0][0].monitor == 0 and viewer.updates[0][-1].full


@pytest.mark.parametrize("quality", [25, 90])
async def test_viewer_settings_fix_quality_and_cap_fps(
    xdisplay: str, app: App, quality: int
) -> None:
    async def send(data: bytes) -> None:
        pass

    async def ready() -> None:
        pass

    source = CountingSource(xdisplay)
    settings = StreamerSettings(pacer=PacerSettings(max_fps=20))
    async with streaming(source, send, ready, xdisplay, settings) as streamer:
        streamer.apply(wire.StreamSettings(max_fps=60, quality=quality))
        await source.more_grabs(2)
        assert streamer.stats.quality == quality
        assert streamer.max_fps == 20


async def test_scrolling_is_sent_as_a_copy_and_a_strip(xdisplay: str, app: App) -> None:
    viewer = Viewer()
    got_update = asyncio.Event()

    async def send(data: bytes) -> None:
        viewer.take(data)
        if viewer.updates:
            got_update.set()

    async def ready() -> None:
        pass

    await asyncio.to_thread(app.command, cmd="page", offset=0)
    source = CountingSource(xdisplay)
    async with streaming(source, send, ready, xdisplay):
        await asyncio.wait_for(got_update.wait(), 10 * UNIT)
        got_update.clear()
        viewer.updates.clear()
        await asyncio.to_thread(app.command, cmd="page", offset=3 * 20)  # three lines down
        await asyncio.wait_for(got_update.wait(), 10 * UNIT)
        rects = [r for part in viewer.updates[0] for r in part.rects]
        assert rects[0].codec is wire.Codec.COPY
        assert wire.copy_source(rects[0].data)[1] - rects[0].rect.y == 60
        assert rects[0].rect.h > 400
        painted = sum(r.rect.area for r in rects[1:])
        assert painted < 1280 * 200  # the exposed strip, not the 1280x544 page
        assert viewer.canvas is not None and viewer.canvas.tobytes() == screen(xdisplay).tobytes()
    await asyncio.to_thread(app.fill, 0, 256, 1280, 544, "#204060")  # leave the screen as found
