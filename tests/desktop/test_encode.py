"""The encoder: the right codec per region, lossless regions exact, JPEG close, the
quality knob following the budget, and the real screen surviving a round trip."""

from __future__ import annotations

import contextlib
import io
import math
import random

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from desktop import encode
from desktop.capture import MssSource
from desktop.encode import Encoder, QualityController, paint
from desktop.geometry import Rect
from desktop.wire import Codec, EncodedRect

from .conftest import App

JPEG_MIN_PSNR = 30.0
"""dB. JPEG at the default quality on photo-like content measures ~38 dB; 30 dB is the
usual floor of 'good' lossy quality, so this catches a broken quality knob or a
colour-channel swap (which lands far below 20 dB)."""


def bgrx(image: Image.Image) -> bytes:
    return image.convert("RGBA").tobytes("raw", "BGRA")


def psnr(a: Image.Image, b: Image.Image) -> float:
    hist = ImageChops.difference(a, b).histogram()
    sq = sum(count * (i % 256) ** 2 for i, count in enumerate(hist))
    mse = sq / (a.width * a.height * 3)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def ui_image(width: int = 512, height: int = 256) -> Image.Image:
    """Dark text on a light editor background with a coloured bar: text/UI content."""
    image = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    draw.rectangle((0, 0, width, 24), fill=(60, 63, 65))
    for row in range(12):
        draw.text(
            (8, 30 + row * 18),
            f"{row:3d}  def encode(self, rects): # é ü",
            fill=(20, 20, 120),
            font=font,
        )
    return image


def photo_image(width: int = 512, height: int = 256, seed: int = 1) -> Image.Image:
    """Gradients, soft blobs and sensor noise: photographic content."""
    rnd = random.Random(seed)
    image = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((width, height)),
            Image.radial_gradient("L").resize((width, height)),
            Image.linear_gradient("L").rotate(90).resize((width, height)),
        ),
    )
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x, y, s = rnd.randrange(width), rnd.randrange(height), rnd.randrange(20, 120)
        draw.ellipse((x, y, x + s, y + s), fill=tuple(rnd.randrange(256) for _ in range(3)))
    image = image.filter(ImageFilter.GaussianBlur(4))
    return Image.blend(image, Image.effect_noise((width, height), 40).convert("RGB"), 0.15)


def roundtrip(
    image: Image.Image, rects: list[Rect] | None = None, quality: int = 70
) -> tuple[list[EncodedRect], Image.Image]:
    w, h = image.size
    encoded = Encoder(quality).encode(bgrx(image), w, h, rects or [Rect(0, 0, w, h)])
    canvas = Image.new("RGB", (w, h))
    paint(canvas, encoded)
    return encoded, canvas


def test_text_is_lossless_and_exact() -> None:
    image = ui_image()
    encoded, canvas = roundtrip(image)
    assert {r.codec for r in encoded} <= {Codec.FILL, Codec.WEBP_LOSSLESS}
    assert Codec.WEBP_LOSSLESS in {r.codec for r in encoded}
    assert canvas.tobytes() == image.tobytes()


def test_photo_is_jpeg_above_the_psnr_floor_and_much_smaller_than_lossless() -> None:
    image = photo_image()
    encoded, canvas = roundtrip(image)
    jpeg = sum(len(r.data) for r in encoded if r.codec is Codec.JPEG)
    assert jpeg > 0.8 * sum(len(r.data) for r in encoded)
    assert psnr(image, canvas) > JPEG_MIN_PSNR
    lossless = io.BytesIO()
    image.save(lossless, "WEBP", lossless=True, method=0, quality=encode.LOSSLESS_EFFORT)
    assert sum(len(r.data) for r in encoded) * 5 < len(lossless.getvalue())


def test_mixed_content_gets_each_codec_where_it_belongs() -> None:
    image = ui_image(768, 384)
    image.paste(photo_image(256, 192), (384, 128))  # tile-aligned photo inside the UI
    encoded, canvas = roundtrip(image)
    for r in encoded:
        inside_photo = (
            r.rect.x >= 384 and r.rect.right <= 640 and r.rect.y >= 128 and r.rect.bottom <= 320
        )
        assert (r.codec is Codec.JPEG) == inside_photo, r
    outside = Image.new("RGB", image.size)
    outside.paste(canvas)
    for img in (outside, image):
        img.paste((0, 0, 0), (384, 128, 640, 320))
    assert outside.tobytes() == image.tobytes()  # text around the photo is exact


def test_flat_rectangles_are_fills_and_a_one_pixel_caret_is_not_lost() -> None:
    image = Image.new("RGB", (256, 128), (10, 20, 30))
    encoded, _ = roundtrip(image)
    assert [(r.rect, r.codec, r.data) for r in encoded] == [
        (Rect(0, 0, 256, 128), Codec.FILL, bytes((10, 20, 30)))
    ]
    image.putpixel((70, 70), (255, 255, 255))  # between the classifier's samples
    encoded, canvas = roundtrip(image)
    assert canvas.tobytes() == image.tobytes()
    assert Codec.FILL not in {r.codec for r in encoded}


def test_oversized_payloads_are_encoded_in_halves() -> None:
    # Noise that the classifier would never send losslessly, forced through the
    # lossless path: every payload must still fit a message.
    noise = Image.frombytes("RGB", (1024, 1024), random.Random(5).randbytes(1024 * 1024 * 3))
    encoder = Encoder()
    whole = Rect(0, 0, 1024, 1024)
    pixels = noise.tobytes("raw", "BGRX")
    pieces = encoder._encode_piece(pixels, 1024, whole, encode.Content.TEXT)
    assert len(pieces) > 1
    assert all(len(p.data) <= encode.MAX_PAYLOAD for p in pieces)
    assert sum(p.rect.area for p in pieces) == 1024 * 1024


def test_only_the_given_rectangles_are_encoded() -> None:
    image = ui_image()
    encoded, _ = roundtrip(image, [Rect(64, 64, 64, 64), Rect(448, 192, 64, 64)])
    for r in encoded:
        assert any(
            r.rect.x >= o.x
            and r.rect.right <= o.right
            and r.rect.y >= o.y
            and r.rect.bottom <= o.bottom
            for o in (Rect(64, 64, 64, 64), Rect(448, 192, 64, 64))
        )
    with pytest.raises(ValueError, match="outside"):
        Encoder().encode(bgrx(image), 512, 256, [Rect(500, 0, 64, 64)])


def test_split_bounds_codec_inputs_and_covers_the_rectangle() -> None:
    pieces = encode.split(Rect(10, 20, 5000, 700), max_pixels=100_000, max_side=4096)
    assert sum(p.area for p in pieces) == 5000 * 700
    assert all(p.area <= 100_000 and p.w <= 4096 for p in pieces)
    assert min(p.x for p in pieces) == 10 and max(p.right for p in pieces) == 5010


def test_decode_rejects_an_image_of_the_wrong_size() -> None:
    encoded, _ = roundtrip(ui_image(128, 64))
    image = next(r for r in encoded if r.codec is Codec.WEBP_LOSSLESS)
    with pytest.raises(ValueError, match="rectangle"):
        encode.decode(EncodedRect(Rect(0, 0, 1, 1), image.codec, image.data))


def test_quality_follows_the_budget() -> None:
    ctl = QualityController(70)
    assert ctl.update(50_000, 10_000, had_photo=False) == 70  # text-only frames: no say
    first = ctl.update(50_000, 10_000, had_photo=True)
    assert first < 70
    for _ in range(50):
        ctl.update(50_000, 10_000, had_photo=True)
    assert ctl.quality == encode.QUALITY_MIN
    for _ in range(100):
        ctl.update(1_000, 10_000, had_photo=True)
    assert ctl.quality == encode.QUALITY_MAX
    steady = ctl.quality
    ctl.update(9_000, 10_000, had_photo=True)  # within budget: stays
    assert ctl.quality == steady


def test_quality_does_not_climb_while_the_cpu_budget_limits_the_frame_rate() -> None:
    ctl = QualityController(encode.QUALITY_MAX)
    for _ in range(100):
        ctl.update(1_000, 10_000, had_photo=True, cpu_bound=True)
    assert ctl.quality == encode.QUALITY_DEFAULT  # drifted back, and no further
    ctl.update(1_000, 10_000, had_photo=True)  # CPU to spare again: climbs
    assert ctl.quality > encode.QUALITY_DEFAULT
    ctl = QualityController(30)
    ctl.update(1_000, 10_000, had_photo=True, cpu_bound=True)
    assert ctl.quality == 30  # below the default: left to the link
    ctl.update(50_000, 10_000, had_photo=True, cpu_bound=True)
    assert ctl.quality < 30  # over the link's budget: down as always


def test_higher_quality_costs_bytes() -> None:
    image = photo_image()
    low = sum(len(r.data) for r in roundtrip(image, quality=30)[0])
    high = sum(len(r.data) for r in roundtrip(image, quality=85)[0])
    assert high > 1.5 * low


def test_real_screen_round_trip_is_exact(xdisplay: str, app: App) -> None:
    with contextlib.closing(MssSource(xdisplay)) as source:
        frame = source.grab(1)
    encoded = Encoder().encode(
        frame.pixels, frame.width, frame.height, [Rect(0, 0, frame.width, frame.height)]
    )
    canvas = Image.new("RGB", (frame.width, frame.height))
    paint(canvas, encoded)
    screen = encode.region_image(frame.pixels, frame.width, Rect(0, 0, frame.width, frame.height))
    assert canvas.tobytes() == screen.tobytes()
    assert screen.getpixel((150, 150)) == (0xD0, 0x20, 0x20)  # the program's block, RGB order
