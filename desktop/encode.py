"""Encode changed screen regions into images a browser decodes natively.

Pure (pixels in, bytes out; Pillow only). Each changed rectangle is looked at tile by
tile (the damage grid): a tile is **photographic** when it has many distinct colours
and none dominates, else **text/UI**. Tiles of one class are merged into rectangles
again, and each rectangle is sent as:

* ``FILL`` (3 bytes) if it is one colour (a cleared window, a background);
* lossless WebP if it is text/UI: text must stay sharp, and UI content compresses very
  well losslessly (WebP's palette and LZ77 transforms: half the bytes of PNG, faster);
* JPEG at the current quality if it is photographic: lossless would cost 20x the bytes,
  and JPEG (libjpeg-turbo) is 5-10x cheaper in CPU than lossy WebP.

Flat areas stay inside the lossless image they belong to rather than being cut out as
fills: separate images lose WebP's shared palette and context, which measured 1.7x
the bytes on an editor screen. The class test looks at a 16x16 sample of each 64x64
tile (``getcolors`` stops counting at the threshold, so photos are rejected early).
The measurements behind every choice are in ``docs/desktop-encoding.md``.

:class:`QualityController` turns "bytes this frame vs. what the link can carry at the
frame rate we want" into a JPEG quality; lossless regions cannot shrink, so a slow link
lowers the frame rate instead (that is the pacer's job).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from enum import Enum
from typing import Final, cast

from PIL import Image

from . import damage, wire
from .geometry import BYTES_PER_PIXEL, Rect
from .wire import Codec, EncodedRect

SAMPLE_STEP: Final = 4
"""Classify on every 4th pixel in both directions: 256 samples per tile, enough to tell
anti-aliased text (measured <= 65 colours) from a photo (median 246)."""

PHOTO_COLOURS: Final = 96
"""Distinct colours among a tile's samples from which it counts as photographic."""

TEXT_BACKGROUND: Final = 0.25
"""Share of a tile's samples its most common colour must have for the tile to count as
text/UI. Text and widgets sit on a background (measured >= 45 % of the samples); a
smooth photo region can have few colours but none dominates (measured <= 10 %)."""

MAX_ENCODE_PIXELS: Final = 1024 * 1024
"""Largest image handed to a codec: a 1280x800 screen in one piece (each cut costs
lossless WebP ~20 % in bytes: the halves do not share a palette or context)."""

JPEG_MAX_PIXELS: Final = 512 * 1024
"""Largest JPEG piece. Pillow's JPEG encoder holds the GIL for a whole image (lossless
WebP releases it), so one 1920x1080 JPEG stalls the agent's event loop by ~17 ms at
p99; in bands of this size ~9 ms, for ~5 % more bytes (measured, docs)."""

MAX_PAYLOAD: Final = wire.MAX_MESSAGE // 2
"""An encoded piece larger than this (noise encoded losslessly can reach 3 bytes per
pixel) is encoded again as two halves, so every payload fits a FRAME message."""

MAX_ENCODE_SIDE: Final = 4096
"""Widest image handed to a codec (WebP's hard limit is 16383)."""

QUALITY_MIN: Final = 20
"""Below this JPEG turns text-like edges into blocks; drop frames instead."""

QUALITY_MAX: Final = 90
"""Above this JPEG grows fast for no visible gain on photographic content."""

QUALITY_DEFAULT: Final = 70

LOSSLESS_EFFORT: Final = 75
"""WebP lossless ``quality`` (effort) at ``method=0``: measured as the smallest output
for the same time as lower efforts (see docs/desktop-encoding.md)."""


SMALL_PIXELS: Final = 64 * 64
"""Lossless images up to this area (a typed character, a caret, a toggled widget) are
compressed harder: ``SMALL_METHOD`` at effort 100 is a third smaller than method 0 on
text and at this size costs well under a millisecond (measured, docs)."""

SMALL_METHOD: Final = 2


class Content(Enum):
    TEXT = "text"
    PHOTO = "photo"


def region_image(pixels: bytes | bytearray, width: int, rect: Rect) -> Image.Image:
    """An RGB image of ``rect`` from a BGRX frame ``width`` pixels wide, converted in
    one pass over just that rectangle (no full-frame copy)."""
    offset = (rect.y * width + rect.x) * BYTES_PER_PIXEL
    view = cast(bytes, memoryview(pixels)[offset:])  # Pillow reads any buffer
    return Image.frombuffer(
        "RGB", (rect.w, rect.h), view, "raw", "BGRX", width * BYTES_PER_PIXEL, 1
    )


def region_sample(pixels: bytes | bytearray, width: int, rect: Rect) -> Image.Image:
    """Every :data:`SAMPLE_STEP`-th pixel of every :data:`SAMPLE_STEP`-th row of
    ``rect`` (the centre of each step x step block, as a nearest-neighbour resize
    picks), read straight from the BGRX frame: the classifier's input, without
    converting the whole rectangle first."""
    step = SAMPLE_STEP
    cols, rows = max(1, rect.w // step), max(1, rect.h // step)
    x0 = rect.x + min(step // 2, rect.w - 1)
    y0 = rect.y + min(step // 2, rect.h - 1)
    words = memoryview(pixels).cast("I")  # one item per pixel
    data = b"".join(
        words[y * width + x0 : y * width + x0 + step * cols : step].tobytes()
        for y in range(y0, y0 + step * rows, step)
    )
    return Image.frombytes("RGB", (cols, rows), data, "raw", "BGRX")


def classify_tiles(
    sample: Image.Image, width: int, height: int, tile: int = damage.TILE
) -> Iterator[tuple[int, int, Content]]:
    """``(col, row, class)`` for each tile of a ``width`` x ``height`` region, row-major,
    from its :func:`region_sample`."""
    w, h = width, height
    per_tile = max(1, tile // SAMPLE_STEP)
    cols, rows = (w + tile - 1) // tile, (h + tile - 1) // tile
    for row in range(rows):
        for col in range(cols):
            box = (col * per_tile, row * per_tile, (col + 1) * per_tile, (row + 1) * per_tile)
            tile_sample = sample.crop(box)
            colours = tile_sample.getcolors(PHOTO_COLOURS)
            samples = tile_sample.width * tile_sample.height
            if colours is None or max(n for n, _ in colours) < TEXT_BACKGROUND * samples:
                yield col, row, Content.PHOTO
            else:
                yield col, row, Content.TEXT


def split(
    rect: Rect, max_pixels: int = MAX_ENCODE_PIXELS, max_side: int = MAX_ENCODE_SIDE
) -> list[Rect]:
    """Cut ``rect`` into pieces no codec chokes on: at most ``max_side`` wide and
    ``max_pixels`` in area (full-width bands, so JPEG blocks stay aligned)."""
    out: list[Rect] = []
    for x in range(rect.x, rect.right, max_side):
        w = min(max_side, rect.right - x)
        band = max(1, max_pixels // w)
        out.extend(
            Rect(x, y, w, min(band, rect.bottom - y)) for y in range(rect.y, rect.bottom, band)
        )
    return out


class Encoder:
    """Turns dirty rectangles of a frame into :class:`~desktop.wire.EncodedRect` s.

    ``quality`` is the JPEG quality for photographic regions; the streamer moves it
    with a :class:`QualityController`. Stateless otherwise, so one encoder serves
    every frame of a session.
    """

    def __init__(self, quality: int = QUALITY_DEFAULT, tile: int = damage.TILE) -> None:
        self.quality = quality
        self.tile = tile

    def encode(
        self, pixels: bytes | bytearray, width: int, height: int, rects: Iterable[Rect]
    ) -> list[EncodedRect]:
        """Encode ``rects`` of a BGRX frame; FILLs first (cheapest to paint, and any
        order is correct because the pieces do not overlap)."""
        fills: list[EncodedRect] = []
        images: list[EncodedRect] = []
        for rect in rects:
            if rect.x < 0 or rect.y < 0 or rect.right > width or rect.bottom > height:
                raise ValueError(f"{rect} outside {width}x{height}")
            for content, sub in self._partition(pixels, width, rect):
                limit = JPEG_MAX_PIXELS if content is Content.PHOTO else MAX_ENCODE_PIXELS
                for piece in split(sub, limit):
                    placed = Rect(rect.x + piece.x, rect.y + piece.y, piece.w, piece.h)
                    for encoded in self._encode_piece(pixels, width, placed, content):
                        (fills if encoded.codec is Codec.FILL else images).append(encoded)
        return fills + images

    def _encode_piece(
        self, pixels: bytes | bytearray, width: int, piece: Rect, content: Content
    ) -> list[EncodedRect]:
        """One piece, converted from the frame on its own (no copy of a larger image)."""
        encoded = self._encode_image(region_image(pixels, width, piece), piece, content)
        if len(encoded.data) <= MAX_PAYLOAD or piece.area == 1:
            return [encoded]
        if piece.h > 1:
            half = piece.h // 2
            parts = (
                Rect(piece.x, piece.y, piece.w, half),
                Rect(piece.x, piece.y + half, piece.w, piece.h - half),
            )
        else:
            half = piece.w // 2
            parts = (
                Rect(piece.x, piece.y, half, 1),
                Rect(piece.x + half, piece.y, piece.w - half, 1),
            )
        return [e for part in parts for e in self._encode_piece(pixels, width, part, content)]

    def _partition(
        self, pixels: bytes | bytearray, width: int, rect: Rect
    ) -> Iterator[tuple[Content, Rect]]:
        """The tiles of ``rect`` grouped by class into rectangles (``rect`` coordinates)."""
        w, h = rect.w, rect.h
        tile = self.tile
        cols = (w + tile - 1) // tile
        rows = (h + tile - 1) // tile
        groups: dict[Content, bytearray] = {}
        sample = region_sample(pixels, width, rect)
        for col, row, content in classify_tiles(sample, w, h, tile):
            flags = groups.get(content)
            if flags is None:
                flags = groups[content] = bytearray(cols * rows)
            flags[row * cols + col] = 1
        for content, flags in groups.items():
            for sub in damage.merge_tiles(flags, w, h, tile):
                yield content, sub

    def _encode_image(self, image: Image.Image, rect: Rect, content: Content) -> EncodedRect:
        out = io.BytesIO()
        if content is Content.PHOTO:
            image.save(out, "JPEG", quality=self.quality)
            return EncodedRect(rect, Codec.JPEG, out.getvalue())
        flat = image.getcolors(1)
        if flat is not None:
            return EncodedRect(rect, Codec.FILL, bytes(cast(tuple[int, int, int], flat[0][1])))
        if image.width * image.height <= SMALL_PIXELS:
            image.save(out, "WEBP", lossless=True, method=SMALL_METHOD, quality=100)
        else:
            image.save(out, "WEBP", lossless=True, method=0, quality=LOSSLESS_EFFORT)
        return EncodedRect(rect, Codec.WEBP_LOSSLESS, out.getvalue())


def decode(rect: EncodedRect) -> Image.Image:
    """The RGB image a viewer paints for ``rect`` (the reference decoder, for tests and
    the benchmark's quality figures). Raises ``ValueError`` on a mismatching image.
    ``COPY`` has no image of its own: :func:`paint` handles it."""
    if rect.codec is Codec.COPY:
        raise ValueError("COPY is painted from the canvas, not decoded")
    if rect.codec is Codec.FILL:
        return Image.new("RGB", (rect.rect.w, rect.rect.h), tuple(rect.data))
    with Image.open(io.BytesIO(rect.data)) as image:
        image.load()
        if image.size != (rect.rect.w, rect.rect.h):
            raise ValueError(f"{rect.codec.name} image is {image.size}, rectangle {rect.rect}")
        return image.convert("RGB")


def paint(canvas: Image.Image, rects: Iterable[EncodedRect]) -> None:
    """Apply an update to an RGB ``canvas`` the way a viewer does, in order."""
    for rect in rects:
        if rect.codec is Codec.COPY:
            src_x, src_y = wire.copy_source(rect.data)
            source = canvas.crop((src_x, src_y, src_x + rect.rect.w, src_y + rect.rect.h))
            canvas.paste(source, (rect.rect.x, rect.rect.y))
        else:
            canvas.paste(decode(rect), (rect.rect.x, rect.rect.y))


class QualityController:
    """Steers the JPEG quality so frames fit what the link carries at the wanted rate.

    After each frame that contained photographic regions, :meth:`update` compares its
    size with the budget (``target_bps / 8 * interval``): over budget lowers the quality
    at once, well under budget raises it slowly (so it does not oscillate). Frames of
    only text or fills leave it alone: their size does not depend on it.

    ``cpu_bound``: the frame rate is held down by the CPU budget (R32), not the link.
    Then the quality does not rise above :data:`QUALITY_DEFAULT` and drifts back to it:
    bytes cost CPU downstream (the agent's TLS and tunnel, the relay, the browser's
    decoder), and frames matter more than the last dB on moving pictures (full-screen
    video at q90 vs q75: 28.6 vs 24 ms of agent + relay CPU per displayed frame, 5.1 vs
    2.5 MB/s, measured with the benchmark; PSNR 41.9 vs 40.5 dB).
    """

    OVER: Final = 1.1
    UNDER: Final = 0.6
    STEP_UP: Final = 2

    def __init__(self, quality: int = QUALITY_DEFAULT) -> None:
        self.quality = max(QUALITY_MIN, min(QUALITY_MAX, quality))

    def update(
        self, frame_bytes: int, budget_bytes: float, had_photo: bool, cpu_bound: bool = False
    ) -> int:
        """Account for one frame; returns the quality to use next."""
        if not had_photo or budget_bytes <= 0:
            return self.quality
        ratio = frame_bytes / budget_bytes
        if ratio > self.OVER:
            step = min(20, max(2, round(10 * (ratio - 1))))
            self.quality = max(QUALITY_MIN, self.quality - step)
        elif cpu_bound:
            if self.quality > QUALITY_DEFAULT:
                self.quality = max(QUALITY_DEFAULT, self.quality - self.STEP_UP)
        elif ratio < self.UNDER:
            self.quality = min(QUALITY_MAX, self.quality + self.STEP_UP)
        return self.quality
