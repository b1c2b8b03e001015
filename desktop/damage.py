"""Change detection: which parts of the screen differ from the previous frame.

Pure (bytes in, rectangles out). Frames are tightly packed 32-bit pixels (BGRA as
``mss`` returns them, ``width * 4`` bytes per row). The screen is cut into square
tiles (:data:`TILE`); a tile is dirty when any of its bytes changed, and dirty tiles
are merged into few rectangles, so the encoder works on a handful of large images
instead of hundreds of small ones.

Comparison uses ``bytes`` slice equality, which CPython runs as ``memcmp``: the whole
frame first (an idle screen costs one compare), then each band of tile rows (unless
its first scanline already differs), then each scanline of a changed band, and
finally only the tiles of a changed scanline that are not known dirty yet.
``bench/desktop_codec.py`` measures this against ``PIL.ImageChops.difference`` +
``getbbox`` per tile; the numbers and the choice are in ``docs/desktop-encoding.md``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Final, NamedTuple

from .geometry import BYTES_PER_PIXEL, Rect
from .scroll import Copy, find_vertical_scroll

TILE: Final = 64
"""Tile side in pixels. Small enough that a blinking caret or a typed character
costs one 16 KiB tile, large enough that a full-screen change is ~500 tiles (the
per-tile Python work stays a few milliseconds) and that merged rectangles stay few."""


def _grid(width: int, height: int, tile: int) -> tuple[int, int]:
    if width <= 0 or height <= 0 or tile <= 0:
        raise ValueError(f"bad geometry {width}x{height} tile {tile}")
    return (width + tile - 1) // tile, (height + tile - 1) // tile


def changed_tiles(
    prev: bytes | bytearray, cur: bytes | bytearray, width: int, height: int, tile: int = TILE
) -> bytearray:
    """Row-major flags, one per tile (``cols * rows``): 1 where ``cur`` differs from ``prev``."""
    cols, rows = _grid(width, height, tile)
    stride = width * BYTES_PER_PIXEL
    if len(prev) != stride * height or len(cur) != stride * height:
        raise ValueError("frame buffers do not match the geometry")
    flags = bytearray(cols * rows)
    if prev == cur:
        return flags
    tile_bytes = tile * BYTES_PER_PIXEL
    for row in range(rows):
        band_start = row * tile * stride
        band_end = min((row + 1) * tile, height) * stride
        # The band as a whole only when its first scanline is equal: under motion
        # (video, scrolling) every band differs, and copying it to compare it was
        # ~20 % of the compare's time.
        first = band_start + stride
        if (
            prev[band_start:first] == cur[band_start:first]
            and prev[band_start:band_end] == cur[band_start:band_end]
        ):
            continue
        base = row * cols
        runs = [(0, cols)]  # maximal runs of columns of this band not known dirty yet
        for line in range(band_start, band_end, stride):
            found = 0
            for c0, c1 in runs:
                found += _bisect(prev, cur, line, line + stride, c0, c1, tile_bytes, flags, base)
            if found:
                runs = _clean_runs(flags, base, cols)
                if not runs:
                    break
    return flags


def _bisect(
    prev: bytes | bytearray,
    cur: bytes | bytearray,
    line: int,
    line_end: int,
    c0: int,
    c1: int,
    tile_bytes: int,
    flags: bytearray,
    base: int,
) -> int:
    """Flag the dirty tiles among columns ``c0..c1`` of one scanline; return how many.

    Halving keeps the common cases to a few ``memcmp`` calls: an equal span is one
    compare, and one changed tile in a clean row costs ~log2(cols) compares instead
    of one compare per column (a moving vertical line would otherwise cost
    rows x cols slice compares).
    """
    start = line + c0 * tile_bytes
    end = min(line + c1 * tile_bytes, line_end)
    if prev[start:end] == cur[start:end]:
        return 0
    if c1 - c0 == 1:
        flags[base + c0] = 1
        return 1
    mid = (c0 + c1) // 2
    return _bisect(prev, cur, line, line_end, c0, mid, tile_bytes, flags, base) + _bisect(
        prev, cur, line, line_end, mid, c1, tile_bytes, flags, base
    )


def _clean_runs(flags: bytearray, base: int, cols: int) -> list[tuple[int, int]]:
    runs = []
    col = 0
    while col < cols:
        if flags[base + col]:
            col += 1
            continue
        start = col
        while col < cols and not flags[base + col]:
            col += 1
        runs.append((start, col))
    return runs


def merge_tiles(flags: Sequence[int], width: int, height: int, tile: int = TILE) -> list[Rect]:
    """Cover the set tiles with rectangles: horizontal runs per tile row, then runs
    with the same columns in consecutive rows grow downwards. Clipped to the screen.

    Exact at tile granularity (no clean tile is covered), and a full screen is one
    rectangle. ``flags`` is row-major as :func:`changed_tiles` returns it.
    """
    cols, rows = _grid(width, height, tile)
    if len(flags) != cols * rows:
        raise ValueError("flags do not match the tile grid")
    done: list[tuple[int, int, int, int]] = []  # (col0, col1, row0, row1)
    growing: dict[tuple[int, int], int] = {}  # (col0, col1) -> first row
    for row in range(rows + 1):
        runs: list[tuple[int, int]] = []
        if row < rows:
            base = row * cols
            col = 0
            while col < cols:
                if flags[base + col]:
                    start = col
                    while col < cols and flags[base + col]:
                        col += 1
                    runs.append((start, col))
                col += 1
        next_growing = {run: growing.pop(run, row) for run in runs}
        done.extend((c0, c1, r0, row) for (c0, c1), r0 in growing.items())
        growing = next_growing
    rects = []
    for c0, c1, r0, r1 in done:
        x, y = c0 * tile, r0 * tile
        rects.append(Rect(x, y, min(c1 * tile, width) - x, min(r1 * tile, height) - y))
    rects.sort(key=lambda r: (r.y, r.x))
    return rects


def diff(
    prev: bytes | bytearray, cur: bytes | bytearray, width: int, height: int, tile: int = TILE
) -> list[Rect]:
    """The changed regions between two frames of the same size; ``[]`` when identical."""
    return merge_tiles(changed_tiles(prev, cur, width, height, tile), width, height, tile)


TRIM_MAX_PIXELS: Final = 64 * 1024
"""Rectangles up to this area (16 tiles) are trimmed to the exact bounds of their
changed pixels (a typed character is ~10x20 pixels of its 64x64 tile: the encoder then
sends a fraction of the pixels). Larger ones are sent as they are: they are motion or a
new window, where the tile margin costs little, and trimming one costs up to ~25 us per
row (measured)."""


def trim(prev: bytes | bytearray, cur: bytes | bytearray, width: int, rect: Rect) -> Rect | None:
    """The bounding box of the pixels of ``rect`` that differ (``None``: none do).

    Row by row: equal rows are one ``memcmp``; in a changed row, the XOR of the two
    rows as big integers has its highest set bit in the first differing byte and its
    lowest in the last (``int.from_bytes`` runs in C).
    """
    stride = width * BYTES_PER_PIXEL
    span = rect.w * BYTES_PER_PIXEL

    def row(y: int) -> tuple[bytes | bytearray, bytes | bytearray]:
        start = y * stride + rect.x * BYTES_PER_PIXEL
        return prev[start : start + span], cur[start : start + span]

    changed = [y for y in range(rect.y, rect.bottom) if operator.ne(*row(y))]
    if not changed:
        return None
    left, right = span, 0
    for y in changed:
        a, b = row(y)
        x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
        left = min(left, span - 1 - (x.bit_length() - 1) // 8)
        right = max(right, span - 1 - ((x & -x).bit_length() - 1) // 8)
        if left == 0 and right == span - 1:
            break
    top, bottom = changed[0], changed[-1]
    x0 = rect.x + left // BYTES_PER_PIXEL
    x1 = rect.x + right // BYTES_PER_PIXEL + 1
    return Rect(x0, top, x1 - x0, bottom + 1 - top)


def trimmed(
    prev: bytes | bytearray, cur: bytes | bytearray, width: int, rects: Sequence[Rect]
) -> list[Rect]:
    """``rects`` with the small ones trimmed (see :data:`TRIM_MAX_PIXELS`)."""
    out = []
    for rect in rects:
        if rect.area > TRIM_MAX_PIXELS:
            out.append(rect)
        elif (exact := trim(prev, cur, width, rect)) is not None:
            out.append(exact)
    return out


class Damage(NamedTuple):
    """What changed: an optional ``copy`` (scrolled content the viewer moves itself),
    then ``rects`` to encode, relative to the picture after the copy."""

    copy: Copy | None
    rects: list[Rect]


def bounding_box(rects: Sequence[Rect]) -> Rect:
    x0, y0 = min(r.x for r in rects), min(r.y for r in rects)
    x1, y1 = max(r.right for r in rects), max(r.bottom for r in rects)
    return Rect(x0, y0, x1 - x0, y1 - y0)


def _minus(rect: Rect, hole: Rect) -> list[Rect]:
    """``rect`` without ``hole``: up to four rectangles (above, below, left, right)."""
    x0, y0 = max(rect.x, hole.x), max(rect.y, hole.y)
    x1, y1 = min(rect.right, hole.right), min(rect.bottom, hole.bottom)
    if x0 >= x1 or y0 >= y1:
        return [rect]
    pieces = [
        Rect(rect.x, rect.y, rect.w, y0 - rect.y),
        Rect(rect.x, y1, rect.w, rect.bottom - y1),
        Rect(rect.x, y0, x0 - rect.x, y1 - y0),
        Rect(x1, y0, rect.right - x1, y1 - y0),
    ]
    return [p for p in pieces if p.w > 0 and p.h > 0]


class DamageTracker:
    """Remembers the last frame it was given and reports what changed since.

    The caller gives it only frames it is about to send, so changes that happened
    while the channel was busy are compared against what the viewer last got: they
    coalesce into one update instead of a queue of stale ones. The first frame, a
    size change or :meth:`reset` yields the whole screen. With ``scroll`` (the
    default), content that moved vertically inside the changed area is reported as a
    :class:`~desktop.scroll.Copy` and only the rest as rectangles.
    """

    def __init__(self, tile: int = TILE, *, scroll: bool = True) -> None:
        self._tile = tile
        self._scroll = scroll
        self._prev: bytes | bytearray | None = None
        self._size = (0, 0)

    def reset(self) -> None:
        """Forget the reference: the next update is a full frame (viewer asked to refresh)."""
        self._prev = None

    def update(self, pixels: bytes | bytearray, width: int, height: int) -> Damage:
        """What differs in ``pixels`` from the previous update's frame.

        Keeps a reference to ``pixels``: the caller must not modify the buffer
        afterwards (``mss`` hands out a fresh buffer per grab), except through
        :meth:`update_area`.

        The whole frame is compared even when the caller knows where the screen was
        drawn: drawing between learning that and the grab lands in the grab anywhere,
        and would be taken as sent without being compared.
        """
        prev, self._prev = self._prev, pixels
        if prev is None or self._size != (width, height):
            self._size = (width, height)
            _grid(width, height, self._tile)
            return Damage(None, [Rect(0, 0, width, height)])
        rects = diff(prev, pixels, width, height, self._tile)
        if not (self._scroll and rects):
            return Damage(None, trimmed(prev, pixels, width, rects))
        copy = find_vertical_scroll(prev, pixels, width, bounding_box(rects))
        if copy is None:
            return Damage(None, trimmed(prev, pixels, width, rects))
        # The copy's rows were verified to match exactly, and outside it the viewer's
        # picture after the copy is ``prev``: what is left is the rest of ``rects``.
        rest = [piece for rect in rects for piece in _minus(rect, copy.rect)]
        return Damage(copy, trimmed(prev, pixels, width, rest))

    @property
    def size(self) -> tuple[int, int]:
        """Width and height of the last update's frame."""
        return self._size

    @property
    def picture(self) -> bytearray | None:
        """The frame of the last update, patchable by :meth:`update_area` (``None``:
        none yet, or the buffer is not ours to change)."""
        return self._prev if isinstance(self._prev, bytearray) else None

    def update_area(self, pixels: bytes | bytearray, area: Rect) -> Damage:
        """What differs in ``pixels``, a grab of just ``area`` (rows of ``area.w``
        pixels), from the previous update's frame; then that frame is patched with it,
        so :attr:`picture` is the new frame. For small damage: grabbing and comparing a
        few rows costs a fraction of a whole screen. No scroll detection here (areas
        this small are cheaper to encode than to search). Needs :attr:`picture`.

        Unlike a restricted compare of a whole grab, this cannot lose a change: drawing
        outside ``area`` after it was reported is not in :attr:`picture` either, and
        its own damage report brings it in later."""
        picture = self.picture
        width, height = self._size
        inside = area.x >= 0 and area.y >= 0 and area.right <= width and area.bottom <= height
        if picture is None or not inside:
            raise ValueError(f"no frame to patch with {area}")
        stride = width * BYTES_PER_PIXEL
        span = area.w * BYTES_PER_PIXEL
        if len(pixels) != span * area.h:
            raise ValueError("area buffer does not match the area")
        old = bytearray(span * area.h)
        for i in range(area.h):
            start = (area.y + i) * stride + area.x * BYTES_PER_PIXEL
            old[i * span : (i + 1) * span] = picture[start : start + span]
        rects = trimmed(old, pixels, area.w, diff(old, pixels, area.w, area.h, self._tile))
        for i in range(area.h):
            start = (area.y + i) * stride + area.x * BYTES_PER_PIXEL
            picture[start : start + span] = pixels[i * span : (i + 1) * span]
        return Damage(None, [Rect(r.x + area.x, r.y + area.y, r.w, r.h) for r in rects])
