"""Change detection: exact at tile granularity, nothing for an idle screen, on
synthetic buffers (hypothesis) and on the real X server."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desktop import damage
from desktop.capture import MssSource
from desktop.damage import Damage, DamageTracker
from desktop.geometry import Rect

from .conftest import App


def blank(width: int, height: int) -> bytearray:
    return bytearray(width * height * 4)


def poke(buf: bytearray, width: int, x: int, y: int, channel: int = 1) -> None:
    buf[(y * width + x) * 4 + channel] ^= 0xFF


def covered(rects: list[Rect], x: int, y: int) -> bool:
    return any(r.x <= x < r.right and r.y <= y < r.bottom for r in rects)


def test_identical_frames_have_no_damage() -> None:
    a = blank(130, 70)
    assert damage.diff(a, bytes(a), 130, 70) == []


def test_one_pixel_dirties_its_tile_only() -> None:
    a, b = blank(200, 150), blank(200, 150)
    poke(b, 200, 70, 130)
    assert damage.diff(a, b, 200, 150) == [Rect(64, 128, 64, 22)]  # clipped at the bottom


def test_full_change_is_one_rectangle() -> None:
    a, b = blank(130, 70), bytearray(b"\x01" * (130 * 70 * 4))
    assert damage.diff(a, b, 130, 70) == [Rect(0, 0, 130, 70)]


def test_vertical_line_in_a_clean_band() -> None:
    """The bisection case: one changed column in otherwise equal scanlines."""
    w, h = 640, 256
    a, b = blank(w, h), blank(w, h)
    for y in range(h):
        poke(b, w, 600, y)
    assert damage.diff(a, b, w, h) == [Rect(576, 0, 64, 256)]


def test_merging_grows_runs_downwards_and_splits_shapes() -> None:
    # An L: tiles (0,0) (0,1) (1,1) on a 3x2 grid of 10 px tiles.
    flags = [1, 0, 0, 1, 1, 0]
    rects = damage.merge_tiles(flags, 30, 20, tile=10)
    assert sorted(rects) == [Rect(0, 0, 10, 10), Rect(0, 10, 20, 10)]
    # Same columns in consecutive rows become one rectangle.
    assert damage.merge_tiles([0, 1, 1, 0, 1, 1], 30, 20, tile=10) == [Rect(10, 0, 20, 20)]


def test_geometry_mismatch_is_a_local_error() -> None:
    with pytest.raises(ValueError, match="geometry"):
        damage.changed_tiles(blank(10, 10), blank(10, 11), 10, 10)
    with pytest.raises(ValueError, match="grid"):
        damage.merge_tiles([1], 100, 100)


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 150),
    height=st.integers(1, 150),
    tile=st.sampled_from([8, 16, 64]),
    data=st.data(),
)
def test_damage_is_exact_at_tile_granularity(
    width: int, height: int, tile: int, data: st.DataObject
) -> None:
    a = blank(width, height)
    b = bytearray(a)
    points = data.draw(
        st.lists(st.tuples(st.integers(0, width - 1), st.integers(0, height - 1)), max_size=12)
    )
    for x, y in points:
        poke(b, width, x, y, channel=data.draw(st.integers(0, 3)))
    rects = damage.diff(a, b, width, height, tile)
    changed = {
        (x, y)
        for x, y in points
        if a[(y * width + x) * 4 : (y * width + x) * 4 + 4]
        != b[(y * width + x) * 4 : (y * width + x) * 4 + 4]
    }
    dirty_tiles = {(x // tile, y // tile) for x, y in changed}
    # Every changed pixel is covered...
    assert all(covered(rects, x, y) for x, y in changed)
    # ...no rectangle covers a clean tile, and none overlap...
    covered_tiles = [
        (cx, cy)
        for r in rects
        for cy in range(r.y // tile, (r.bottom + tile - 1) // tile)
        for cx in range(r.x // tile, (r.right + tile - 1) // tile)
    ]
    assert sorted(covered_tiles) == sorted(dirty_tiles)
    # ...and each is tile-aligned and inside the frame.
    for r in rects:
        assert r.x % tile == 0 and r.y % tile == 0
        assert r.right <= width and r.bottom <= height
        assert r.right == width or r.w % tile == 0
        assert r.bottom == height or r.h % tile == 0


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 150),
    height=st.integers(1, 150),
    data=st.data(),
)
def test_trim_is_the_exact_bounding_box_and_an_area_update_patches_the_frame(
    width: int, height: int, data: st.DataObject
) -> None:
    a = blank(width, height)
    b = bytearray(a)
    points = data.draw(
        st.lists(
            st.tuples(st.integers(0, width - 1), st.integers(0, height - 1)),
            max_size=6,
            unique=True,  # a second poke of a pixel would undo the first
        )
    )
    for x, y in points:
        poke(b, width, x, y, channel=data.draw(st.integers(0, 3)))
    everything = Rect(0, 0, width, height)
    if not points:
        assert damage.trim(a, b, width, everything) is None
        return
    xs, ys = [x for x, _ in points], [y for _, y in points]
    box = Rect(min(xs), min(ys), max(xs) + 1 - min(xs), max(ys) + 1 - min(ys))
    assert damage.trim(a, b, width, everything) == box
    # A grab of just an area around the change: reported exactly, and patched in.
    tracker = DamageTracker(tile=16)
    tracker.update(bytearray(a), width, height)
    x0, y0 = data.draw(st.integers(0, box.x)), data.draw(st.integers(0, box.y))
    x1 = data.draw(st.integers(box.right, width))
    y1 = data.draw(st.integers(box.bottom, height))
    area = Rect(x0, y0, x1 - x0, y1 - y0)
    rows = b"".join(
        b[(y * width + x0) * 4 : (y * width + x1) * 4] for y in range(area.y, area.bottom)
    )
    found = tracker.update_area(rows, area)
    assert found.copy is None and damage.bounding_box(found.rects) == box
    assert all(covered(found.rects, x, y) for x, y in points)
    assert tracker.picture == b
    assert tracker.update_area(rows, area) == Damage(None, [])


def test_tracker_starts_full_and_resets_on_request_or_resize() -> None:
    tracker = DamageTracker()
    a = blank(100, 80)
    assert tracker.update(a, 100, 80) == Damage(None, [Rect(0, 0, 100, 80)])
    assert tracker.update(bytes(a), 100, 80) == Damage(None, [])
    tracker.reset()
    assert tracker.update(bytes(a), 100, 80) == Damage(None, [Rect(0, 0, 100, 80)])
    assert tracker.update(blank(50, 80), 50, 80) == Damage(None, [Rect(0, 0, 50, 80)])


def test_real_screen_damage_is_exactly_the_painted_pixels(xdisplay: str, app: App) -> None:
    with contextlib.closing(MssSource(xdisplay)) as source:
        tracker = DamageTracker()
        frame = source.grab(1)
        tracker.update(frame.pixels, frame.width, frame.height)
        # Idle: the program is not drawing, so a second grab has no damage.
        frame = source.grab(1)
        assert tracker.update(frame.pixels, frame.width, frame.height).rects == []

        app.fill(400, 300, 40, 20, "#00ff00")  # x 400..439, y 300..319: tile (6, 4)
        frame = source.grab(1)
        damage_ = tracker.update(frame.pixels, frame.width, frame.height)
        assert damage_ == Damage(None, [Rect(400, 300, 40, 20)])  # tile (6, 4), trimmed

        app.fill(500, 330, 100, 40, "#ffff00")  # across tiles (7..9, 5)
        frame = source.grab(1)
        damage_ = tracker.update(frame.pixels, frame.width, frame.height)
        assert damage_ == Damage(None, [Rect(500, 330, 100, 40)])

        frame = source.grab(1)
        assert tracker.update(frame.pixels, frame.width, frame.height).rects == []
