"""Scroll detection: recognise content that moved vertically, so it is sent as a
``COPY`` of pixels the viewer already has instead of being encoded again.

Pure. Without it, scrolling a page re-encodes the whole viewport every frame (~40 KB
and ~25 ms per 1280x800 frame, measured in ``docs/desktop-encoding.md``); with it, a
frame costs the exposed strip. Only vertical scrolling is detected: it is what text,
lists and browsers do; horizontal scrolls fall back to plain damage.

How: hash a 256-pixel-wide band of every row of the changed area in both frames;
each row of the new frame whose band occurs exactly once in the old one votes for an
offset; the most voted offset is then verified with full-width row compares, and the
longest run of rows that really moved becomes the copy.
"""

from __future__ import annotations

from collections import Counter
from typing import Final, NamedTuple

from .geometry import BYTES_PER_PIXEL, Rect

BAND: Final = 256
"""Width in pixels of the row fingerprints: wide enough that distinct text lines give
distinct bands, narrow enough that hashing two frames' rows costs ~1 ms."""

MIN_ROWS: Final = 32
"""A copy must move at least this many rows: below that, encoding them is as cheap."""

MIN_VOTES: Final = 4
"""Rows agreeing on an offset before it is worth verifying (blank lines do not vote)."""


class Copy(NamedTuple):
    """Copy ``rect.w`` x ``rect.h`` pixels from ``(src_x, src_y)`` of the previous
    frame to ``rect``."""

    rect: Rect
    src_x: int
    src_y: int


def find_vertical_scroll(
    prev: bytes | bytearray, cur: bytes | bytearray, width: int, area: Rect
) -> Copy | None:
    """The largest block of ``area`` that moved vertically between the frames, or None."""
    if area.h < MIN_ROWS or area.w < 2:
        return None
    stride = width * BYTES_PER_PIXEL
    band_x = area.x + max(0, (area.w - BAND) // 2)
    b0 = band_x * BYTES_PER_PIXEL
    b1 = min(area.right, band_x + BAND) * BYTES_PER_PIXEL
    old, new = memoryview(prev), memoryview(cur)  # one copy per key, not two
    where: dict[bytes, int] = {}
    for y in range(area.y, area.bottom):
        key = old[y * stride + b0 : y * stride + b1].tobytes()
        where[key] = -1 if key in where else y  # -1: occurs twice, says nothing
    votes: Counter[int] = Counter()
    for y in range(area.y, area.bottom):
        src = where.get(new[y * stride + b0 : y * stride + b1].tobytes(), -1)
        if src >= 0 and src != y:
            votes[src - y] += 1
    if not votes:
        return None
    dy, count = votes.most_common(1)[0]
    if count < MIN_VOTES:
        return None
    # Verify on the full width and keep the longest run of rows that truly moved.
    x0 = area.x * BYTES_PER_PIXEL
    x1 = area.right * BYTES_PER_PIXEL
    best = (0, 0)
    run_start = None
    top = max(area.y, area.y - dy)
    bottom = min(area.bottom, area.bottom - dy)
    for y in range(top, bottom + 1):
        moved = y < bottom and (
            cur[y * stride + x0 : y * stride + x1]
            == prev[(y + dy) * stride + x0 : (y + dy) * stride + x1]
        )
        if moved and run_start is None:
            run_start = y
        elif not moved and run_start is not None:
            if y - run_start > best[1] - best[0]:
                best = (run_start, y)
            run_start = None
    start, end = best
    if end - start < MIN_ROWS:
        return None
    return Copy(Rect(area.x, start, area.w, end - start), area.x, start + dy)


def apply_copy(prev: bytes | bytearray, width: int, copy: Copy) -> bytearray:
    """``prev`` with ``copy`` applied: the picture the viewer has after the COPY, against
    which the rest of the new frame is diffed."""
    stride = width * BYTES_PER_PIXEL
    out = bytearray(prev)
    rect = copy.rect
    span = rect.w * BYTES_PER_PIXEL
    for i in range(rect.h):
        src = (copy.src_y + i) * stride + copy.src_x * BYTES_PER_PIXEL
        dst = (rect.y + i) * stride + rect.x * BYTES_PER_PIXEL
        out[dst : dst + span] = prev[src : src + span]
    return out
