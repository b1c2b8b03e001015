"""One session's clipboard on the agent: the right, the backend, the rate, the audit.

The right comes from the ``desktop`` channel's meta (``clipboard``) and then from the
relay's `desktop.wire.Rights` messages. With it, text copied on the device goes to the
viewer; with it *and* a control session, text from the viewer becomes the device's
clipboard (the relay applies the same rule). Without it no backend exists: nothing is
read from or written to the device's clipboard, whatever the relay passes on. A
withdrawn right closes the backend (the selection is given up), a granted one opens it.

Text from the viewer is set on the device before the viewer's next message is handled,
so a paste (the viewer sends the text, then Ctrl+V) pastes that text; beyond a burst of
:data:`TO_DEVICE_BURST`, at most :data:`TO_DEVICE_RATE` a second (the reader waits: the
channel's credit slows a flooding viewer, nothing queues up). Text copied on the device
goes out at most once per :data:`MIN_INTERVAL`, the latest copy winning. The local audit log gets
``clipboard-on``/``clipboard-off`` (the device's clipboard is watched, or no longer),
``clipboard-right`` (the relay changed the right), and one ``clipboard`` line per
transfer, ``clipboard-refused`` per refusal: direction and size in bytes, never the
text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from desktop.clipboard import ClipboardBackend, ClipboardFactory
from desktop.x11 import X11Error
from tunnel.aio import ChannelError

logger = logging.getLogger(__name__)

MIN_INTERVAL: Final = 0.25
"""Seconds between two copies sent to the viewer: a person copies far less often; a
program that rewrites the clipboard in a loop costs at most 4 messages and 4 audit lines
a second."""

TO_DEVICE_RATE: Final = 4.0
TO_DEVICE_BURST: Final = 4
"""Texts from the viewer: a few pastes in a row go at once, a flood at 4 a second."""

TO_DEVICE: Final = "to-device"
TO_VIEWER: Final = "to-viewer"

Note = Callable[..., None]
"""``note(outcome, **detail)``: an audit line of the desktop service."""


class Latest:
    """A slot where the newest text replaces an unsent one, taken at most once per
    ``interval``."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._text: str | None = None
        self._ready = asyncio.Event()
        self._next = 0.0

    def offer(self, text: str) -> None:
        self._text = text
        self._ready.set()

    def clear(self) -> None:
        self._text = None
        self._ready.clear()

    async def take(self) -> str:
        while True:
            await self._ready.wait()
            wait = self._next - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            text, self._text = self._text, None
            self._ready.clear()
            if text is not None:
                self._next = self._clock() + self._interval
                return text


class Bucket:
    """A token bucket (sans-I/O): :meth:`take` books one token and says how long to wait
    for it."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> float:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= 1
        return max(0.0, -self._tokens / self._rate)


class SessionClipboard:
    """See the module docstring. `run` is the session's clipboard task; `from_viewer`
    and `set_right` are called by the session's reader, in message order."""

    def __init__(
        self,
        session_id: str,
        display: str,
        factory: ClipboardFactory,
        *,
        allowed: bool,
        control: bool,
        send: Callable[[str], Awaitable[None]],
        note: Note,
    ) -> None:
        self._session_id = session_id
        self._display = display
        self._factory = factory
        self._allowed = allowed
        self._control = control
        self._send = send
        self._note = note
        self._backend: ClipboardBackend | None = None
        self._generation = 0
        self._opened = asyncio.Event()  # the first backend is made (or could not be)
        self._switching = asyncio.Lock()  # one open or close at a time (run, set_right)
        self._to_device = Bucket(TO_DEVICE_RATE, TO_DEVICE_BURST, time.monotonic())
        self._to_viewer = Latest(MIN_INTERVAL)

    async def run(self) -> None:
        """Open the backend if the right allows, then send the device's copies to the
        viewer; on cancellation close the backend."""
        try:
            await self._open()
            self._opened.set()
            await self._pump_to_viewer()
        finally:
            self._opened.set()
            await self._close()

    async def set_right(self, allowed: bool) -> None:
        """The relay says the right changed: open or close the backend to match."""
        if allowed == self._allowed:
            return
        self._allowed = allowed
        self._note("clipboard-right", session_id=self._session_id, allowed=allowed)
        if allowed:
            await self._open()
        else:
            await self._close()

    async def from_viewer(self, text: str) -> None:
        """Make the viewer's text the device's clipboard; returns once it is (or is
        refused), so the viewer's next message (Ctrl+V) finds it there."""
        size = len(text.encode("utf-8"))
        refusal = "no-right" if not self._allowed else None if self._control else "view-only"
        if refusal is not None:
            logger.warning(
                "! session %s: clipboard from the viewer refused: %s", self._session_id, refusal
            )
            self._refused(TO_DEVICE, size, refusal)
            return
        wait = self._to_device.take(time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        await self._opened.wait()
        backend = self._backend
        if backend is None or not self._allowed:
            self._refused(TO_DEVICE, size, "unavailable" if self._allowed else "no-right")
        elif size > backend.max_bytes:
            self._refused(TO_DEVICE, size, "too-large")
        elif await asyncio.to_thread(backend.put, text):
            logger.debug("> session %s: %d bytes to the device's clipboard", self._session_id, size)
            self._crossed(TO_DEVICE, size)
        else:
            self._refused(TO_DEVICE, size, "not-set")

    # -- internals ------------------------------------------------------------------------

    async def _open(self) -> None:
        async with self._switching:
            if self._backend is None and self._allowed:
                await self._make()

    async def _make(self) -> None:
        self._generation += 1
        generation = self._generation
        loop = asyncio.get_running_loop()

        def copied(text: str) -> None:  # the backend's thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(self._copied, generation, text)

        made = loop.run_in_executor(None, self._factory, self._display, copied)
        try:
            self._backend = await asyncio.shield(made)
        except asyncio.CancelledError:  # the session ended while the backend was being made
            made.add_done_callback(lambda _: self._discard(loop, made))
            raise
        except (X11Error, OSError) as exc:
            logger.error("! session %s: no clipboard: %s", self._session_id, exc)
            self._note("clipboard-unavailable", session_id=self._session_id)
            return
        logger.info(
            "= session %s: clipboard on (%s)",
            self._session_id,
            "both ways" if self._control else "from the device only",
        )
        self._note("clipboard-on", session_id=self._session_id, to_device=self._control)

    @staticmethod
    def _discard(loop: asyncio.AbstractEventLoop, made: asyncio.Future[ClipboardBackend]) -> None:
        """Close a backend that was finished after nobody wanted it any more."""
        if not made.cancelled() and made.exception() is None:
            loop.run_in_executor(None, made.result().close)

    async def _close(self) -> None:
        self._generation += 1  # late copies of the old backend are dropped
        self._to_viewer.clear()
        async with self._switching:
            backend, self._backend = self._backend, None
            if backend is not None:
                await asyncio.to_thread(backend.close)
                logger.info("= session %s: clipboard off", self._session_id)
                self._note("clipboard-off", session_id=self._session_id)

    def _copied(self, generation: int, text: str) -> None:
        if generation == self._generation and self._allowed and self._backend is not None:
            self._to_viewer.offer(text)

    async def _pump_to_viewer(self) -> None:
        while True:
            text = await self._to_viewer.take()
            if not self._allowed:
                continue
            try:
                await self._send(text)
            except ChannelError:
                return  # the session is ending; its reader reports why
            self._crossed(TO_VIEWER, len(text.encode("utf-8")))

    def _crossed(self, direction: str, size: int) -> None:
        self._note("clipboard", session_id=self._session_id, direction=direction, bytes=size)

    def _refused(self, direction: str, size: int, error: str) -> None:
        self._note(
            "clipboard-refused",
            session_id=self._session_id,
            direction=direction,
            bytes=size,
            error=error,
        )
