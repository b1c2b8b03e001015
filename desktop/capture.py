"""Screen capture: whole monitors as raw BGRA pixel buffers.

:class:`ScreenSource` is the seam a platform backend implements; :class:`MssSource`
is the one we ship, on ``mss`` (on X11 its XCB backend reads the screen through
MIT-SHM ``XShmGetImage`` and falls back to ``XGetImage`` by itself; GDI on Windows,
CoreGraphics on macOS). Calls block (a 1280x800 grab is ~0.6 ms with MIT-SHM), so the
streamer makes them from its worker thread, and always from that same thread.

A source may also say *where* the screen was drawn: its ``damage`` attribute, a
:class:`~desktop.xdamage.DamageWatch` or ``None``. ``MssSource`` offers one on an X
server with the DAMAGE extension; the streamer then captures on damage instead of
polling (a Windows backend would offer DXGI's dirty rectangles the same way), and
grabs only the damaged area when it is small (``grab_area``, optional like ``damage``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Protocol

import mss
from mss.exception import ScreenShotError

from .geometry import Rect
from .x11 import X11Error
from .xdamage import DamageWatch, XDamageWatch

logger = logging.getLogger(__name__)


class CaptureError(Exception):
    """The screen cannot be read (display gone, no such monitor, backend failure)."""


@dataclass(frozen=True, slots=True)
class Monitor:
    """One capturable area in virtual-desktop coordinates.

    ``index`` follows ``mss``: 0 is the bounding box of all monitors together, 1..n
    the physical monitors. Input coordinates from a viewer are relative to the
    monitor it watches; ``left``/``top`` translate them to the desktop.
    """

    index: int
    left: int
    top: int
    width: int
    height: int
    primary: bool = False
    name: str = ""

    @property
    def rect(self) -> Rect:
        return Rect(self.left, self.top, self.width, self.height)


@dataclass(frozen=True, slots=True)
class Frame:
    """One grab: ``width * height`` pixels, 4 bytes each in B, G, R, X order, rows
    tightly packed (``width * 4`` bytes). The alpha byte is undefined. The buffer is
    the frame's own (never reused by the source), so it can be kept as a reference."""

    monitor: Monitor
    width: int
    height: int
    pixels: bytes | bytearray


class ScreenSource(Protocol):
    """A screen to stream. Implementations may be single-threaded: callers use one
    instance from one thread at a time."""

    def monitors(self) -> list[Monitor]:
        """Index 0 (all monitors) first, then each monitor by index."""
        ...

    def grab(self, index: int) -> Frame:
        """The current pixels of monitor ``index``; raises :class:`CaptureError`."""
        ...

    def close(self) -> None: ...


class MssSource:
    """:class:`ScreenSource` on ``mss``; ``display`` (X11 only) defaults to ``$DISPLAY``.
    ``watch_damage=False`` leaves :attr:`damage` ``None`` (the streamer polls)."""

    def __init__(self, display: str | None = None, *, watch_damage: bool = True) -> None:
        kwargs: dict[str, Any] = {}
        linux = sys.platform.startswith("linux")
        if display is not None and linux:
            kwargs["display"] = display
        try:
            self._mss = mss.MSS(**kwargs)
        except ScreenShotError as exc:
            raise CaptureError(f"cannot open the display: {exc}") from exc
        self._monitors: list[Monitor] | None = None
        self.damage: DamageWatch | None = None
        if watch_damage and linux:
            try:
                self.damage = XDamageWatch(display)
            except X11Error as exc:
                logger.info("= no damage reports, polling the screen: %s", exc)

    def monitors(self) -> list[Monitor]:
        if self._monitors is None:
            try:
                raw = self._mss.monitors
            except ScreenShotError as exc:
                raise CaptureError(f"cannot list monitors: {exc}") from exc
            self._monitors = [
                Monitor(
                    index=i,
                    left=m["left"],
                    top=m["top"],
                    width=m["width"],
                    height=m["height"],
                    primary=bool(m.get("is_primary", False)),
                    name=str(m.get("output") or m.get("name") or ""),
                )
                for i, m in enumerate(raw)
            ]
            logger.debug("= monitors %s", self._monitors)
        return self._monitors

    def grab(self, index: int) -> Frame:
        monitors = self.monitors()
        if not 0 <= index < len(monitors):
            raise CaptureError(f"no monitor {index} (have 0..{len(monitors) - 1})")
        monitor = monitors[index]
        try:
            shot = self._mss.grab(
                {
                    "left": monitor.left,
                    "top": monitor.top,
                    "width": monitor.width,
                    "height": monitor.height,
                }
            )
        except ScreenShotError as exc:
            raise CaptureError(f"grab of monitor {index} failed: {exc}") from exc
        return Frame(monitor, shot.width, shot.height, shot.raw)

    def grab_area(self, index: int, area: Rect) -> bytes | bytearray:
        """The pixels of ``area`` (relative to monitor ``index``) only, rows of
        ``area.w`` pixels; for small damage, instead of the whole monitor."""
        monitor = self.monitors()[index]
        try:
            shot = self._mss.grab(
                {
                    "left": monitor.left + area.x,
                    "top": monitor.top + area.y,
                    "width": area.w,
                    "height": area.h,
                }
            )
        except ScreenShotError as exc:
            raise CaptureError(f"grab of {area} on monitor {index} failed: {exc}") from exc
        return shot.raw

    @property
    def uses_shared_memory(self) -> bool:
        """True once an X11 grab went through MIT-SHM (the fast path)."""
        return any("MIT-SHM is working" in s for s in self._mss.performance_status)

    def close(self) -> None:
        self._mss.close()
        if self.damage is not None:
            self.damage.close()
