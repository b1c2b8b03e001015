"""Cursor position and shape through XFIXES on the real X server."""

from __future__ import annotations

import contextlib

from desktop.cursor import XCursorSource, argb_to_rgba
from desktop.inject import XTestSink

from .conftest import App


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


def test_premultiplied_argb_becomes_straight_rgba() -> None:
    opaque_red = 0xFFFF0000
    half_white = 0x80808080  # 50 % alpha, premultiplied white
    transparent = 0x00000000
    assert argb_to_rgba([opaque_red, half_white, transparent]) == bytes(
        [255, 0, 0, 255, 255, 255, 255, 128, 0, 0, 0, 0]
    )
