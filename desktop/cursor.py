"""The pointer's position and image, sent apart from the screen so the viewer draws it.

Screen grabs do not contain the cursor (X11 draws it in hardware or a sprite layer),
and sending it as pixels would damage tiles on every mouse move. Instead the viewer
gets the cursor image once per shape change (``serial`` changes) and small position
messages. On X11 the image comes from XFIXES ``GetCursorImage`` (python-xlib exposes
it), fetched only when XFIXES reports a new shape (``DisplayCursorNotify``): decoding
its pixel list in Python cost ~7 % of the streamer's CPU when it was fetched on every
pass. The position comes from ``QueryPointer``, a small round trip. Without XFIXES
only the position is known and :meth:`XCursorSource.image` returns ``None``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from Xlib.ext import xfixes

from .x11 import open_display

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CursorImage:
    """Straight (not premultiplied) RGBA, ``width * height * 4`` bytes."""

    serial: int
    hot_x: int
    hot_y: int
    width: int
    height: int
    rgba: bytes


@dataclass(frozen=True, slots=True)
class CursorState:
    """Pointer position in desktop coordinates and the serial of its current shape
    (0 when the shape is unknown)."""

    x: int
    y: int
    serial: int


class CursorSource(Protocol):
    """Polled by the streamer once per capture, from its worker thread."""

    def poll(self) -> CursorState: ...

    def image(self) -> CursorImage | None:
        """The shape :meth:`poll` last saw, or ``None`` if the platform cannot tell."""
        ...

    def close(self) -> None: ...


def argb_to_rgba(pixels: list[int]) -> bytes:
    """XFIXES gives premultiplied ARGB words; browsers' ``ImageData`` wants straight RGBA."""
    out = bytearray(len(pixels) * 4)
    for i, p in enumerate(pixels):
        a = (p >> 24) & 0xFF
        r, g, b = (p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF
        if 0 < a < 0xFF:
            r, g, b = (min(0xFF, c * 0xFF // a) for c in (r, g, b))
        out[i * 4 : i * 4 + 4] = bytes((r, g, b, a))
    return bytes(out)


class XCursorSource:
    """:class:`CursorSource` for an X server (``display`` defaults to ``$DISPLAY``)."""

    def __init__(self, display: str | None = None) -> None:
        self._d = open_display(display)
        self._root = self._d.screen().root
        info = self._d.query_extension(xfixes.extname)
        self.has_shape = bool(info.present)
        self._shape_event = -1
        if self.has_shape:
            self._d.xfixes_query_version()  # XFIXES needs the version handshake first
            self._shape_event = info.first_event + xfixes.XFixesCursorNotify
            self._d.xfixes_select_cursor_input(self._root, xfixes.XFixesDisplayCursorNotifyMask)
        else:
            logger.info("= no XFIXES: cursor position only, no shape")
        self._reply: Any = None
        self._image: CursorImage | None = None

    def poll(self) -> CursorState:
        reshaped = False
        while self._d.pending_events():  # read without blocking
            reshaped |= self._d.next_event().type == self._shape_event
        if self.has_shape and (reshaped or self._reply is None):
            self._reply = self._d.xfixes_get_cursor_image(self._root)
            return CursorState(self._reply.x, self._reply.y, self._reply.cursor_serial)
        pointer = self._root.query_pointer()
        serial = self._reply.cursor_serial if self._reply is not None else 0
        return CursorState(pointer.root_x, pointer.root_y, serial)

    def image(self) -> CursorImage | None:
        reply = self._reply
        if reply is None:
            return None
        if self._image is None or self._image.serial != reply.cursor_serial:
            self._image = CursorImage(
                serial=reply.cursor_serial,
                hot_x=reply.xhot,
                hot_y=reply.yhot,
                width=reply.width,
                height=reply.height,
                rgba=argb_to_rgba(list(reply.cursor_image)),
            )
        return self._image

    def close(self) -> None:
        self._d.close()
