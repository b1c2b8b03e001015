"""Where the X server says the screen was drawn: the DAMAGE extension on the root window.

Polling the screen costs a full grab and compare per tick whether anything changed or
not, and a change waits for the next tick. With DAMAGE the X server tells us: the
streamer sleeps until the connection's socket becomes readable, captures right after
the application drew, and compares only the reported areas (measurements in
``docs/desktop-encoding.md``).

The damage object reports *delta* rectangles: one event per area newly added to the
accumulated region, none for drawing into an area already damaged. :meth:`take`
empties the region (``DamageSubtract``) and makes a round trip before it returns, so
every area drawn before that point is in its answer and every area drawn afterwards
produces a new event: a grab made after :meth:`take` never misses a change. Drawing
between the subtract and the grab is reported twice; the diff finds nothing new the
second time.

Used from the streamer's worker thread only (python-xlib connections are not shared
between threads); the event loop only watches :meth:`fileno` for readability.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

from Xlib import error as xerror
from Xlib.ext import damage as xdamage

from .damage import bounding_box
from .geometry import Rect
from .x11 import X11Error, open_display

logger = logging.getLogger(__name__)

MAX_RECTS: Final = 256
"""Rectangles kept per :meth:`XDamageWatch.take`; beyond that their bounding box
stands for all of them (a burst of many small draws would otherwise make the compare
walk hundreds of tiny areas)."""


class DamageWatch(Protocol):
    """A source of "this area of the screen was drawn" reports (desktop coordinates)."""

    def fileno(self) -> int:
        """Readable when new reports are waiting."""
        ...

    def take(self) -> list[Rect]:
        """The areas drawn since the previous call (``[]`` if none), and start over."""
        ...

    def close(self) -> None: ...


class XDamageWatch:
    """:class:`DamageWatch` on an X server with the DAMAGE extension; raises
    :class:`~desktop.x11.X11Error` when the server has none (callers then poll)."""

    def __init__(self, display: str | None = None) -> None:
        self._d = open_display(display, require=xdamage.extname)
        try:
            self._d.damage_query_version()  # the extension needs the handshake first
            info = self._d.query_extension(xdamage.extname)
            self._event = info.first_event + xdamage.DamageNotifyCode
            root = self._d.screen().root
            self._damage = root.damage_create(xdamage.DamageReportDeltaRectangles)
            self._d.sync()
        except (xerror.XError, OSError) as exc:
            self._d.close()
            raise X11Error(f"cannot watch damage: {exc}") from exc
        logger.debug("= watching X damage on the root window")

    def fileno(self) -> int:
        return int(self._d.fileno())

    def take(self) -> list[Rect]:
        self._d.damage_subtract(self._damage)
        self._d.sync()  # the subtract is done, and the events before it are read
        rects: list[Rect] = []
        while self._d.pending_events():
            event = self._d.next_event()
            if event.type != self._event:
                continue
            area = event.area
            if area.width > 0 and area.height > 0:
                rects.append(Rect(area.x, area.y, area.width, area.height))
        if len(rects) > MAX_RECTS:
            rects = [bounding_box(rects)]
        return rects

    def close(self) -> None:
        self._d.close()
