"""Cursor position and shape through XFIXES on the real X server."""

from __future__ import annotations

import contextlib
import time

from Xlib import X
from Xlib import display as xdisplay_

from desktop.cursor import XCursorSource, argb_to_rgba
from desktop.inject import XTestSink
from tests.conftest import UNIT

from .conftest import App

XC_HAND2 = 60  # a glyph of the X cursor font


def test_position_follows_the_pointer_and_the_shape_is_an_image(xdisplay: str, app: App) -> None:
    with (
        contextlib.closing(XCursorSource(xdisplay)) as cursor,
        contextlib.closing(XTestSink(xdisplay)) as sink,
    ):
        assert cursor.has_shape
        sink.pointer(321, 234, 0)
        state = cursor.poll()
        assert (state.x, state.y) == (321, 234)
        assert state.serial != 0
        image = cursor.image()
        assert image is not None and image.serial == state.serial
        assert 0 < image.width <= 256 and 0 < image.height <= 256
        assert image.hot_x < image.width and image.hot_y < image.height
        assert len(image.rgba) == image.width * image.height * 4
        assert any(image.rgba[3::4])  # some pixel is visible
        sink.pointer(10, 20, 0)
        assert (cursor.poll().x, cursor.poll().y) == (10, 20)
        assert cursor.image() is image  # same shape: not converted again
    app.drain()


def test_a_new_shape_is_noticed_and_fetched_once(xdisplay: str, app: App) -> None:
    """The image is fetched when XFIXES reports a new shape, not on every poll."""
    d = xdisplay_.Display(xdisplay)
    with (
        contextlib.closing(d),
        contextlib.closing(XCursorSource(xdisplay)) as cursor,
        contextlib.closing(XTestSink(xdisplay)) as sink,
    ):
        sink.pointer(50, 50, 0)
        before = cursor.poll().serial
        font = d.open_font("cursor")
        hand = font.create_glyph_cursor(font, XC_HAND2, XC_HAND2 + 1, (0, 0, 0), (65535,) * 3)
        # InputOnly: it only gives the area its cursor, and draws nothing.
        window = d.screen().root.create_window(
            1100, 600, 40, 40, 0, 0, X.InputOnly, X.CopyFromParent,
            override_redirect=True, cursor=hand,
        )  # fmt: skip
        window.map()
        d.sync()
        sink.pointer(1120, 620, 0)
        deadline = time.monotonic() + 10 * UNIT
        while (state := cursor.poll()).serial == before:
            assert time.monotonic() < deadline, "the new shape was not noticed"
        assert (state.x, state.y) == (1120, 620)
        image = cursor.image()
        assert image is not None and image.serial == state.serial
        assert cursor.poll().serial == state.serial
        assert cursor.image() is image
        window.destroy()
        sink.pointer(50, 50, 0)
        d.sync()
    app.drain()


def test_premultiplied_argb_becomes_straight_rgba() -> None:
    opaque_red = 0xFFFF0000
    half_white = 0x80808080  # 50 % alpha, premultiplied white
    transparent = 0x00000000
    assert argb_to_rgba([opaque_red, half_white, transparent]) == bytes(
        [255, 0, 0, 255, 255, 255, 255, 128, 0, 0, 0, 0]
    )
