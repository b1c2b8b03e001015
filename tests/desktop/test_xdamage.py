"""The X DAMAGE watch on the real X server: a program's drawing is reported where it
happened, the report is consumed by ``take``, and the socket says when to look."""

from __future__ import annotations

import asyncio
import contextlib
import select

from desktop.geometry import Rect
from desktop.xdamage import XDamageWatch
from tests.conftest import UNIT

from .conftest import App


def covers(rects: list[Rect], area: Rect) -> bool:
    """Whether the union of ``rects`` contains every pixel of ``area``."""
    return all(
        any(r.x <= x < r.right and r.y <= y < r.bottom for r in rects)
        for y in range(area.y, area.bottom)
        for x in range(area.x, area.right)
    )


async def test_drawing_is_reported_once_where_it_happened(xdisplay: str, app: App) -> None:
    with contextlib.closing(XDamageWatch(xdisplay)) as watch:
        watch.take()  # whatever was drawn before
        assert watch.take() == []  # the still screen: nothing

        await asyncio.to_thread(app.fill, 700, 300, 17, 9, "#123456")
        readable, _, _ = select.select([watch.fileno()], [], [], 10 * UNIT)
        assert readable, "the drawing was not reported"
        drawn = watch.take()
        assert covers(drawn, Rect(700, 300, 17, 9))
        # Reported where it happened, not the whole screen.
        assert all(r.x >= 700 and r.right <= 717 and r.y >= 300 and r.bottom <= 309 for r in drawn)
        assert watch.take() == []


async def test_drawing_between_takes_accumulates(xdisplay: str, app: App) -> None:
    with contextlib.closing(XDamageWatch(xdisplay)) as watch:
        watch.take()
        await asyncio.to_thread(app.fill, 10, 700, 8, 8, "#aa0000")
        await asyncio.to_thread(app.fill, 1200, 20, 8, 8, "#00aa00")
        drawn = watch.take()
        assert covers(drawn, Rect(10, 700, 8, 8))
        assert covers(drawn, Rect(1200, 20, 8, 8))
