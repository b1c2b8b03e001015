"""Scroll detection: moved content becomes one COPY, and a COPY plus the remaining
rectangles always rebuild the new frame exactly."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from desktop.damage import DamageTracker
from desktop.geometry import Rect
from desktop.scroll import Copy, apply_copy, find_vertical_scroll

W = 320


def page(lines: int, seed: int = 1) -> list[bytes]:
    """Rows of a text-like page: distinct 'lines' of 4 rows each, blank rows between."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(lines):
        ink = rnd.randbytes(W * 4)
        rows.extend([ink, ink[::-1], ink, bytes(W * 4)])
    return rows


def frame(rows: list[bytes]) -> bytes:
    return b"".join(rows)


def rebuild(prev: bytes, cur: bytes, width: int, height: int) -> tuple[bytearray, Copy | None]:
    """What a viewer ends up with: prev, the copy applied, then the rectangles' pixels."""
    tracker = DamageTracker(tile=16)
    tracker.update(prev, width, height)
    damage = tracker.update(cur, width, height)
    out = apply_copy(prev, width, damage.copy) if damage.copy else bytearray(prev)
    stride = width * 4
    for r in damage.rects:
        for y in range(r.y, r.bottom):
            a, b = y * stride + r.x * 4, y * stride + r.right * 4
            out[a:b] = cur[a:b]
    return out, damage.copy


def test_scrolled_page_is_one_copy_and_a_strip() -> None:
    rows = page(60)
    height = 160
    prev, cur = frame(rows[:height]), frame(rows[24 : 24 + height])  # scrolled down 24 rows
    copy = find_vertical_scroll(prev, cur, W, Rect(0, 0, W, height))
    assert copy == Copy(Rect(0, 0, W, height - 24), 0, 24)
    tracker = DamageTracker(tile=16)
    tracker.update(prev, W, height)
    damage = tracker.update(cur, W, height)
    assert damage.copy == copy
    # The exposed 24 rows at most (trimmed to the rows that differ from the copy).
    [strip] = damage.rects
    assert strip.y >= height - 24 and strip.bottom <= height
    out, _ = rebuild(prev, cur, W, height)
    assert out == cur


def test_scrolling_up_is_detected_too() -> None:
    rows = page(60)
    prev, cur = frame(rows[40:200]), frame(rows[0:160])
    copy = find_vertical_scroll(prev, cur, W, Rect(0, 0, W, 160))
    assert copy == Copy(Rect(0, 40, W, 120), 0, 0)


def test_no_copy_without_movement() -> None:
    rows = page(60)
    prev = frame(rows[:160])
    changed = bytearray(prev)
    changed[50 * W * 4 : 50 * W * 4 + 40] = bytes(40)
    assert find_vertical_scroll(prev, bytes(changed), W, Rect(0, 0, W, 160)) is None
    blank = bytes(W * 4 * 160)
    assert find_vertical_scroll(blank, blank, W, Rect(0, 0, W, 160)) is None
    assert find_vertical_scroll(prev, frame(rows[8:168]), W, Rect(0, 0, W, 16)) is None  # too small


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(64, 200),
    shift=st.integers(-100, 100),
    edits=st.lists(st.tuples(st.integers(0, 199), st.integers(0, W - 1)), max_size=6),
    seed=st.integers(0, 1000),
)
def test_copy_and_rectangles_always_rebuild_the_frame(
    height: int, shift: int, edits: list[tuple[int, int]], seed: int
) -> None:
    rows = page(150, seed)  # 600 rows: base + shift + height always fits
    base = 200
    prev = frame(rows[base : base + height])
    cur = bytearray(frame(rows[base + shift : base + shift + height]))
    for y, x in edits:  # something else changed too
        if y < height:
            cur[(y * W + x) * 4] ^= 0xFF
    out, copy = rebuild(prev, bytes(cur), W, height)
    assert out == cur
    if copy is not None:
        assert copy.src_y >= 0 and copy.src_y + copy.rect.h <= height
