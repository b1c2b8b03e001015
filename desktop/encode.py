"""Encode changed screen regions into images a browser decodes natively.

Pure (pixels in, bytes out; Pillow only). Each changed rectangle is looked at tile by
tile (the damage grid) and every tile is put in one of three classes:

* **flat** -- one colour: sent as ``FILL`` (3 bytes). Window backgrounds, cleared areas.
* **text/UI** -- few distinct colours: lossless WebP. Text must stay sharp, and UI
  content compresses very well losslessly (WebP's palette and LZ77 transforms).
* **photographic** -- many distinct colours: JPEG at the current quality. Lossless on
  a photo costs 20-50x the bytes; JPEG is 5-10x cheaper in CPU than lossy WebP.

Tiles of one class are merged into rectangles again, so a photo inside a window costs
one JPEG and the text around it one WebP. The class test is the number of distinct
colours among a 16x16 sample of the 64x64 tile (``getcolors`` stops counting at the
threshold, so photos are rejected early). The measurements behind these choices are in
``docs/desktop-encoding.md``.

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

from . import damage
from .geometry import Rect
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

MAX_ENCODE_PIXELS: Final = 512 * 1024
"""Largest image handed to a codec. Worst case (noise, lossless) is ~3 bytes/pixel,
1.5 MiB, which keeps every payload well inside ``wire.MAX_MESSAGE``."""

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


class Content(Enum):
    FLAT = "flat"
    TEXT = "text"
    PHOTO = "photo"


def region_image(pixels: bytes | bytearray, width: int, rect: Rect) -> Image.Image:
    """An RGB image of ``rect`` from a BGRX frame ``width`` pixels wide, converted in
    one pass over just that rectangle (no full-frame copy)."""
    offset = (rect.y * width + rect.x) * damage.BYTES_PER_PIXEL
    view = cast(bytes, memoryview(pixels)[offset:])  # Pillow reads any buffer
    return Image.frombuffer(
        "RGB", (rect.w, rect.h), view, "raw", "BGRX", width * damage.BYTES_PER_PIXEL, 1
    )


def classify_tiles(
    region: Image.Image, tile: int = damage.TILE
) -> Iterator[tuple[int, int, Content, tuple[int, int, int] | None]]:
    """``(col, row, class, fill colour)`` for each tile of ``region``, row-major."""
    w, h = region.size
    step = SAMPLE_STEP
    sample = region.resize(
        (max(1, w // step), max(1, h // step)), Image.Resampling.NEAREST, reducing_gap=None
    )
    per_tile = max(1, tile // step)
    cols, rows = (w + tile - 1) // tile, (h + tile - 1) // tile
    for row in range(rows):
        for col in range(cols):
            box = (col * per_tile, row * per_tile, (col + 1) * per_tile, (row + 1) * per_tile)
            tile_sample = sample.crop(box)
            colours = tile_sample.getcolors(PHOTO_COLOURS)
            if colours is None or max(count for count, _ in colours) < TEXT_BACKGROUND * (
                tile_sample.width * tile_sample.height
            ):
                yield col, row, Content.PHOTO, None
                continue
            if len(colours) == 1:
                # The sample says flat; make sure (a 1-pixel caret hides between samples).
                full = region.crop(
                    (col * tile, row * tile, min(w, (col + 1) * tile), min(h, (row + 1) * tile))
                ).getcolors(1)
                if full is not None:
                    yield col, row, Content.FLAT, cast(tuple[int, int, int], full[0][1])
                    continue
            yield col, row, Content.TEXT, None


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
            region = region_image(pixels, width, rect)
            for content, colour, sub in self._partition(region):
                absolute = Rect(rect.x + sub.x, rect.y + sub.y, sub.w, sub.h)
                if content is Content.FLAT:
                    assert colour is not None
                    fills.append(EncodedRect(absolute, Codec.FILL, bytes(colour)))
                    continue
                for piece in split(sub):
                    image = region.crop(piece.box())
                    placed = Rect(rect.x + piece.x, rect.y + piece.y, piece.w, piece.h)
                    images.append(self._encode_image(image, placed, content))
        return fills + images

    def _partition(
        self, region: Image.Image
    ) -> Iterator[tuple[Content, tuple[int, int, int] | None, Rect]]:
        """Group the region's tiles by class (and fill colour) into rectangles."""
        w, h = region.size
        tile = self.tile
        cols = (w + tile - 1) // tile
        rows = (h + tile - 1) // tile
        groups: dict[tuple[Content, tuple[int, int, int] | None], bytearray] = {}
        for col, row, content, colour in classify_tiles(region, tile):
            flags = groups.get((content, colour))
            if flags is None:
                flags = groups[(content, colour)] = bytearray(cols * rows)
            flags[row * cols + col] = 1
        for (content, colour), flags in groups.items():
            for sub in damage.merge_tiles(flags, w, h, tile):
                yield content, colour, sub

    def _encode_image(self, image: Image.Image, rect: Rect, content: Content) -> EncodedRect:
        out = io.BytesIO()
        if content is Content.PHOTO:
            image.save(out, "JPEG", quality=self.quality)
            return EncodedRect(rect, Codec.JPEG, out.getvalue())
        image.save(out, "WEBP", lossless=True, method=0, quality=LOSSLESS_EFFORT)
        return EncodedRect(rect, Codec.WEBP_LOSSLESS, out.getvalue())


def decode(rect: EncodedRect) -> Image.Image:
    """The RGB image a viewer paints for ``rect`` (the reference decoder, for tests and
    the benchmark's quality figures). Raises ``ValueError`` on a mismatching image."""
    if rect.codec is Codec.FILL:
        return Image.new("RGB", (rect.rect.w, rect.rect.h), tuple(rect.data))
    with Image.open(io.BytesIO(rect.data)) as image:
        image.load()
        if image.size != (rect.rect.w, rect.rect.h):
            raise ValueError(f"{rect.codec.name} image is {image.size}, rectangle {rect.rect}")
        return image.convert("RGB")


def paint(canvas: Image.Image, rects: Iterable[EncodedRect]) -> None:
    """Apply an update to an RGB ``canvas`` the way a viewer does."""
    for rect in rects:
        canvas.paste(decode(rect), (rect.rect.x, rect.rect.y))


class QualityController:
    """Steers the JPEG quality so frames fit what the link carries at the wanted rate.

    After each frame that contained photographic regions, :meth:`update` compares its
    size with the budget (``target_bps / 8 * interval``): over budget lowers the quality
    at once, well under budget raises it slowly (so it does not oscillate). Frames of
    only text or fills leave it alone: their size does not depend on it.
    """

    OVER: Final = 1.1
    UNDER: Final = 0.6
    STEP_UP: Final = 2

    def __init__(self, quality: int = QUALITY_DEFAULT) -> None:
        self.quality = max(QUALITY_MIN, min(QUALITY_MAX, quality))

    def update(self, frame_bytes: int, budget_bytes: float, had_photo: bool) -> int:
        """Account for one frame; returns the quality to use next."""
        if not had_photo or budget_bytes <= 0:
            return self.quality
        ratio = frame_bytes / budget_bytes
        if ratio > self.OVER:
            step = min(20, max(2, round(10 * (ratio - 1))))
            self.quality = max(QUALITY_MIN, self.quality - step)
        elif ratio < self.UNDER:
            self.quality = min(QUALITY_MAX, self.quality + self.STEP_UP)
        return self.quality
