"""Capture on the real X server: geometry, the fast path, and the program's pixels."""

from __future__ import annotations

import contextlib

import pytest
from PIL import Image

from desktop.capture import CaptureError, MssSource
from desktop.encode import region_image
from desktop.geometry import Rect

from .conftest import App
from .tkapp import BACKGROUND, BLOCK, BLOCK_COLOUR, HEIGHT, WIDTH


def rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


def test_monitors_and_the_shared_memory_path(xdisplay: str) -> None:
    with contextlib.closing(MssSource(xdisplay)) as source:
        monitors = source.monitors()
        assert [m.index for m in monitors] == list(range(len(monitors)))
        assert (monitors[0].width, monitors[0].height) == (WIDTH, HEIGHT)
        assert monitors[1].rect == Rect(0, 0, WIDTH, HEIGHT)
        frame = source.grab(1)
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        assert len(frame.pixels) == WIDTH * HEIGHT * 4
        assert frame.monitor == monitors[1]
        assert source.uses_shared_memory  # XShmGetImage, not the XGetImage fallback


def test_capture_returns_the_programs_pixels(xdisplay: str, app: App) -> None:
    with contextlib.closing(MssSource(xdisplay)) as source:
        frame = source.grab(1)
    screen = region_image(frame.pixels, frame.width, Rect(0, 0, frame.width, frame.height))
    x, y, w, h = BLOCK
    block = screen.crop((x, y, x + w, y + h))
    assert block.getcolors() == [(w * h, rgb(BLOCK_COLOUR))]
    # The pixels just outside the block are the background: the block is where the
    # program drew it, to the pixel.
    for px, py in ((x - 1, y), (x + w, y), (x, y - 1), (x, y + h)):
        assert screen.getpixel((px, py)) == rgb(BACKGROUND)
    # The raw buffer really is B, G, R, X.
    offset = (y * frame.width + x) * 4
    assert bytes(frame.pixels[offset : offset + 3]) == bytes(reversed(rgb(BLOCK_COLOUR)))


def test_a_changed_pixel_shows_in_the_next_grab(xdisplay: str, app: App) -> None:
    with contextlib.closing(MssSource(xdisplay)) as source:
        app.fill(1000, 700, 10, 10, "#123456")
        image: Image.Image = region_image(source.grab(0).pixels, WIDTH, Rect(1000, 700, 10, 10))
    assert image.getcolors() == [(100, (0x12, 0x34, 0x56))]


def test_unknown_monitor_and_missing_display_are_capture_errors(xdisplay: str) -> None:
    with (
        contextlib.closing(MssSource(xdisplay)) as source,
        pytest.raises(CaptureError, match="no monitor 9"),
    ):
        source.grab(9)
    with pytest.raises(CaptureError, match="display"):
        MssSource(":4999")
