"""Desktop encoding choices, measured: codecs, classifier, change detection, executor.

Everything runs on synthetic but realistic screens rendered with Pillow (no X server
needed, so the figures do not depend on what else is on a screen):

* ``ui``     -- a code editor: dark sidebar, toolbar, anti-aliased text in four colours;
* ``photo``  -- gradients, soft shapes and sensor noise (an image viewer, a video frame);
* ``page``   -- a long text page, and ``scroll`` frames that move it by 40 px each.

Sections of the JSON result (the last line of stdout):

1. ``codecs``   -- bytes, encode time (median of repeats) and PSNR of every candidate
   codec on each whole screen: PNG (zlib 1 and 6), lossless WebP (method 0 at several
   efforts, method 1), JPEG and lossy WebP at three qualities.
2. ``encoder``  -- our tile-classified encoder (FILL / lossless WebP / JPEG) on each
   screen and on a UI with a photo in it, against all-lossless and all-JPEG.
3. ``damage``   -- change detection, ``bytes`` slice compares (what desktop/damage.py
   does) against ``PIL.ImageChops.difference`` + ``getbbox`` per tile, on idle, typing,
   scroll, full-screen and moving-vertical-line frame pairs.
4. ``scroll``   -- damage + encode per frame of the scrolling page, with and without
   scroll detection (``COPY``): ms and bytes per frame.
5. ``executor`` -- the damage+encode pipeline on scroll and on full-screen video
   frames, run off an asyncio loop in a worker thread, in a worker process the frames
   are shipped to, and in a worker process that has the frames itself (as one that
   owned the capture would): frames/s, CPU ms per frame (both processes), and the
   event loop's p99 and worst lag (a 1 ms ticker) while it runs.

Usage: ``python bench/desktop_codec.py [--quick|--full]`` (``--quick`` < 1 min at
1280x800; ``--full`` at 1920x1080 with more repeats). ``docs/desktop-encoding.md``
quotes a run of this script.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import multiprocessing
import random
import resource
import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from harness import emit, percentile, progress
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from desktop import damage
from desktop.damage import DamageTracker
from desktop.encode import Encoder, paint
from desktop.geometry import Rect
from desktop.wire import Codec

WORDS = [
    "def",
    "class",
    "return",
    "import",
    "from",
    "self",
    "None",
    "True",
    "False",
    "lambda",
    "yield",
    "async",
    "await",
    "for",
    "while",
    "if",
    "else",
    "elif",
    "try",
    "except",
    "finally",
    "with",
    "as",
    "pass",
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "outlink",
    "tunnel",
    "channel",
    "frame",
    "desktop",
    "encode",
    "monitor",
    "cursor",
    "viewer",
    "session",
    "consent",
]
SCROLL_STEP = 40
COPY_BYTES = 4  # a COPY rectangle's payload


# -- content ---------------------------------------------------------------------------


def ui_screen(w: int, h: int, seed: int = 1) -> Image.Image:
    rnd = random.Random(seed)
    image = Image.new("RGB", (w, h), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    draw.rectangle((0, 0, w, 32), fill=(60, 63, 65))
    for i in range(w // 110):
        draw.text((10 + i * 100, 8), rnd.choice(WORDS).title(), fill=(220, 220, 220), font=font)
    draw.rectangle((0, 32, 220, h), fill=(43, 43, 43))
    for i in range((h - 60) // 18):
        draw.text((12, 40 + i * 18), rnd.choice(WORDS) + ".py", fill=(200, 200, 200), font=font)
        y = 40 + i * 18
        draw.text((230, y), str(i + 1).rjust(4), fill=(150, 150, 150), font=font)
        x = 280 + 16 * rnd.randint(0, 4)
        for _ in range(rnd.randint(0, 9)):
            word = rnd.choice(WORDS)
            colour = rnd.choice([(0, 0, 0), (0, 0, 180), (160, 0, 160), (0, 128, 0)])
            draw.text((x, y), word, fill=colour, font=font)
            x += int(draw.textlength(word + " ", font=font))
    draw.rectangle((0, h - 24, w, h), fill=(0, 122, 204))
    draw.text((8, h - 20), "Ln 12, Col 4  UTF-8  Python", fill=(255, 255, 255), font=font)
    return image


def photo_screen(w: int, h: int, seed: int = 2) -> Image.Image:
    rnd = random.Random(seed)
    gradient = Image.linear_gradient("L")
    image = Image.merge(
        "RGB",
        (
            gradient.resize((w, h)),
            gradient.rotate(90).resize((w, h)),
            Image.radial_gradient("L").resize((w, h)),
        ),
    )
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y, s = rnd.randrange(w), rnd.randrange(h), rnd.randrange(20, 200)
        draw.ellipse((x, y, x + s, y + s), fill=tuple(rnd.randrange(256) for _ in range(3)))
    image = image.filter(ImageFilter.GaussianBlur(6))
    return Image.blend(image, Image.effect_noise((w, h), 24).convert("RGB"), 0.12)


def long_page(w: int, h: int, seed: int = 3) -> Image.Image:
    rnd = random.Random(seed)
    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    body, title = ImageFont.load_default(size=15), ImageFont.load_default(size=22)
    y = 10
    while y < h - 30:
        if rnd.random() < 0.08:
            draw.text(
                (60, y),
                " ".join(rnd.choice(WORDS) for _ in range(4)).title(),
                fill=(20, 20, 20),
                font=title,
            )
            y += 34
        else:
            line = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 18)))
            draw.text((60, y), line, fill=(30, 30, 30), font=body)
            y += 21
    return image


def bgrx(image: Image.Image) -> bytes:
    return image.convert("RGBA").tobytes("raw", "BGRA")


def psnr(a: Image.Image, b: Image.Image) -> float:
    hist = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).histogram()
    sq = sum(count * (i % 256) ** 2 for i, count in enumerate(hist))
    mse = sq / (a.width * a.height * 3)
    return 99.0 if mse == 0 else round(10 * math.log10(255**2 / mse), 2)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall milliseconds over ``repeats`` calls, and the last result."""
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2), result


# -- 1. codecs -------------------------------------------------------------------------

CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "png_z1": ("PNG", {"compress_level": 1}),
    "png_z6": ("PNG", {"compress_level": 6}),
    "webpL_m0_e0": ("WEBP", {"lossless": True, "method": 0, "quality": 0}),
    "webpL_m0_e25": ("WEBP", {"lossless": True, "method": 0, "quality": 25}),
    "webpL_m0_e50": ("WEBP", {"lossless": True, "method": 0, "quality": 50}),
    "webpL_m0_e75": ("WEBP", {"lossless": True, "method": 0, "quality": 75}),
    "webpL_m0_e100": ("WEBP", {"lossless": True, "method": 0, "quality": 100}),
    "webpL_m1_e25": ("WEBP", {"lossless": True, "method": 1, "quality": 25}),
    "jpeg_q50": ("JPEG", {"quality": 50}),
    "jpeg_q70": ("JPEG", {"quality": 70}),
    "jpeg_q85": ("JPEG", {"quality": 85}),
    "webp_q50_m0": ("WEBP", {"quality": 50, "method": 0}),
    "webp_q70_m0": ("WEBP", {"quality": 70, "method": 0}),
    "webp_q85_m0": ("WEBP", {"quality": 85, "method": 0}),
}


def bench_codecs(screens: dict[str, Image.Image], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, image in screens.items():
        rows = {}
        for label, (fmt, options) in CANDIDATES.items():

            def save(
                fmt: str = fmt, options: dict[str, Any] = options, image: Image.Image = image
            ) -> bytes:
                buf = io.BytesIO()
                image.save(buf, fmt, **options)
                return buf.getvalue()

            ms, data = timed(save, repeats)
            with Image.open(io.BytesIO(data)) as decoded:
                quality = psnr(image, decoded)
            rows[label] = {"ms": ms, "bytes": len(data), "psnr": quality}
        out[name] = rows
        progress(f"codecs: {name} done")
    return out


# -- 2. our encoder vs single-codec encoders -------------------------------------------


def bench_encoder(screens: dict[str, Image.Image], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, image in screens.items():
        w, h = image.size
        pixels = bgrx(image)
        whole = [Rect(0, 0, w, h)]
        ms, encoded = timed(
            lambda pixels=pixels, w=w, h=h, whole=whole: Encoder().encode(pixels, w, h, whole),
            repeats,
        )
        canvas = Image.new("RGB", (w, h))
        paint(canvas, encoded)
        mix = Counter(r.codec.name for r in encoded)
        area = Counter()
        for r in encoded:
            area[r.codec.name] += r.rect.area
        out[name] = {
            "ms": ms,
            "bytes": sum(len(r.data) for r in encoded),
            "psnr": psnr(image, canvas),
            "rects": dict(mix),
            "area_share": {k: round(v / (w * h), 3) for k, v in area.items()},
        }
        progress(f"encoder: {name} {out[name]['ms']} ms {out[name]['bytes']} B")
    return out


# -- 3. damage -------------------------------------------------------------------------


def pil_changed_tiles(
    prev: bytes, cur: bytes, w: int, h: int, tile: int = damage.TILE
) -> bytearray:
    """The alternative: ImageChops.difference, then getbbox per band and per tile."""
    a = Image.frombuffer("RGBA", (w, h), prev, "raw", "RGBA", 0, 1)
    b = Image.frombuffer("RGBA", (w, h), cur, "raw", "RGBA", 0, 1)
    diff = ImageChops.difference(a, b)
    cols, rows = (w + tile - 1) // tile, (h + tile - 1) // tile
    flags = bytearray(cols * rows)
    for row in range(rows):
        band = diff.crop((0, row * tile, w, min(h, (row + 1) * tile)))
        if band.getbbox(alpha_only=False) is None:
            continue
        for col in range(cols):
            cell = band.crop((col * tile, 0, min(w, (col + 1) * tile), band.height))
            if cell.getbbox(alpha_only=False) is not None:
                flags[row * cols + col] = 1
    return flags


def damage_pairs(w: int, h: int) -> dict[str, tuple[bytes, bytes]]:
    ui = ui_screen(w, h)
    typed = ui.copy()
    ImageDraw.Draw(typed).text((300, 200), "x", fill=(0, 0, 0))
    page = long_page(w, h + SCROLL_STEP)
    line = ui.copy()
    ImageDraw.Draw(line).line((5, 0, 5, h), fill=(255, 0, 0))
    return {
        "idle": (bgrx(ui), bgrx(ui)),
        "typing": (bgrx(ui), bgrx(typed)),
        "scroll": (
            bgrx(page.crop((0, 0, w, h))),
            bgrx(page.crop((0, SCROLL_STEP, w, h + SCROLL_STEP))),
        ),
        "full": (bgrx(ui), bgrx(photo_screen(w, h))),
        "vertical_line": (bgrx(ui), bgrx(line)),
    }


def bench_damage(w: int, h: int, repeats: int) -> dict[str, Any]:
    out = {}
    for name, (a, b) in damage_pairs(w, h).items():
        ms_bytes, flags = timed(lambda a=a, b=b: damage.changed_tiles(a, b, w, h), repeats)
        ms_pil, pil_flags = timed(lambda a=a, b=b: pil_changed_tiles(a, b, w, h), repeats)
        assert flags == pil_flags, name
        ms_merge, rects = timed(lambda flags=flags: damage.merge_tiles(flags, w, h), repeats)
        out[name] = {
            "bytes_ms": ms_bytes,
            "pil_ms": ms_pil,
            "merge_ms": ms_merge,
            "dirty_tiles": sum(flags),
            "rects": len(rects),
        }
    progress("damage done")
    return out


# -- 4./5. the scroll pipeline, and where to run it -----------------------------------


def scroll_frames(w: int, h: int, n: int) -> list[bytes]:
    page = long_page(w, h + n * SCROLL_STEP)
    return [bgrx(page.crop((0, i * SCROLL_STEP, w, h + i * SCROLL_STEP))) for i in range(n)]


class Pipeline:
    """Damage (with or without scroll detection) + encode, holding the reference
    frame: one per worker."""

    def __init__(self, w: int, h: int, scroll: bool = True) -> None:
        self.w, self.h = w, h
        self.tracker = DamageTracker(scroll=scroll)
        self.encoder = Encoder()

    def step(self, pixels: bytes) -> tuple[int, float]:
        cpu = time.thread_time()
        damage = self.tracker.update(pixels, self.w, self.h)
        encoded = self.encoder.encode(pixels, self.w, self.h, damage.rects)
        size = sum(len(r.data) for r in encoded) + (COPY_BYTES if damage.copy else 0)
        return size, time.thread_time() - cpu


_CHILD: Pipeline | None = None
_CHILD_FRAMES: list[bytes] = []


def video_frames(w: int, h: int, n: int) -> list[bytes]:
    """Full-screen motion: the photo panning 16 px per frame (JPEG-bound)."""
    photo = photo_screen(w, h)
    return [bgrx(ImageChops.offset(photo, 16 * i, 0)) for i in range(n)]


WORKLOADS: dict[str, Callable[[int, int, int], list[bytes]]] = {
    "scroll": scroll_frames,
    "video": video_frames,
}


def _child_init(w: int, h: int, workload: str, n_frames: int) -> None:
    """The child's own pipeline; with ``n_frames`` it also renders the frames itself,
    standing in for a child that owns the screen capture."""
    global _CHILD, _CHILD_FRAMES
    _CHILD = Pipeline(w, h)
    _CHILD_FRAMES = WORKLOADS[workload](w, h, n_frames) if n_frames else []


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child_step(pixels: bytes) -> tuple[int, float]:
    assert _CHILD is not None
    return _CHILD.step(pixels)


def _child_step_own(index: int) -> tuple[int, float]:
    assert _CHILD is not None
    return _CHILD.step(_CHILD_FRAMES[index])


def bench_scroll(frames: list[bytes], w: int, h: int) -> dict[str, Any]:
    out = {}
    for label, scroll in (("with_copy", True), ("without_copy", False)):
        pipeline = Pipeline(w, h, scroll)
        pipeline.step(frames[0])  # the first frame is a full one; steady state scrolls
        times, sizes = [], []
        for pixels in frames[1:]:
            start = time.perf_counter()
            size, _ = pipeline.step(pixels)
            times.append(time.perf_counter() - start)
            sizes.append(size)
        out[label] = {
            "ms_per_frame": round(statistics.median(times) * 1000, 2),
            "bytes_per_frame": int(statistics.median(sizes)),
            "frames": len(times),
        }
    progress(f"scroll: {out}")
    return out


async def _drive(
    executor: Executor,
    call: Callable[[Any], tuple[int, float]],
    items: list[Any],
    child_cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Run ``call`` on every item through ``executor`` from an event loop, measuring
    frames/s, CPU per frame (this process, plus the child's if ``child_cpu`` is given)
    and how late a 1 ms ticker on the loop wakes up meanwhile."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - start - 0.001)

    async def cpu_now() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        own = usage.ru_utime + usage.ru_stime
        return own + (await loop.run_in_executor(executor, child_cpu) if child_cpu else 0.0)

    await loop.run_in_executor(executor, call, items[0])  # warm-up: full frame, imports
    cpu0 = await cpu_now()
    tick = asyncio.create_task(ticker())
    start = time.perf_counter()
    for item in items[1:]:
        await loop.run_in_executor(executor, call, item)
    elapsed = time.perf_counter() - start
    done.set()
    await tick
    n = len(items) - 1
    return {
        "fps": round(n / elapsed, 1),
        "cpu_ms_per_frame": round((await cpu_now() - cpu0) / n * 1000, 2),
        "loop_lag_p99_ms": round(percentile(lags, 0.99) * 1000, 2),
        "loop_lag_max_ms": round(max(lags) * 1000, 2),
    }


def bench_executor(w: int, h: int, n: int) -> dict[str, Any]:
    """Per workload, three ways: a thread; a process the frames are shipped to
    (pickled); a process that has the frames itself (as if it owned the capture)."""
    out: dict[str, Any] = {}
    for workload, make in WORKLOADS.items():
        frames = make(w, h, n)
        pipeline = Pipeline(w, h)
        with ThreadPoolExecutor(1) as pool:
            rows = {"thread": asyncio.run(_drive(pool, pipeline.step, frames))}
        context = multiprocessing.get_context("spawn")
        for label, own in (("process_shipped", False), ("process_own", True)):
            initargs = (w, h, workload, n if own else 0)
            with ProcessPoolExecutor(
                1, context, initializer=_child_init, initargs=initargs
            ) as pool:
                if own:
                    result = _drive(pool, _child_step_own, list(range(n)), _child_cpu)
                else:
                    result = _drive(pool, _child_step, frames, _child_cpu)
                rows[label] = asyncio.run(result)
        out[workload] = rows
        progress(f"executor: {workload} {rows}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="under a minute, 1280x800")
    size.add_argument("--full", action="store_true", help="1920x1080, more repeats")
    args = parser.parse_args()
    w, h = (1920, 1080) if args.full else (1280, 800)
    repeats = 3 if args.quick else (9 if args.full else 5)
    n_scroll = 12 if args.quick else 40

    progress(f"rendering {w}x{h} content")
    ui, photo = ui_screen(w, h), photo_screen(w, h)
    page = long_page(w, h)
    mixed = ui.copy()
    mixed.paste(photo.resize((w // 2, h // 2)), (w // 4 // 64 * 64, h // 4 // 64 * 64))
    screens = {"ui": ui, "photo": photo, "page": page}

    result: dict[str, Any] = {"screen": f"{w}x{h}", "repeats": repeats}
    result["codecs"] = bench_codecs(screens, repeats)
    result["encoder"] = bench_encoder({**screens, "ui_with_photo": mixed}, repeats)
    result["damage"] = bench_damage(w, h, repeats)
    frames = scroll_frames(w, h, n_scroll)
    result["scroll"] = bench_scroll(frames, w, h)
    result["executor"] = bench_executor(w, h, n_scroll)
    result["choice"] = {
        "text_ui": Codec.WEBP_LOSSLESS.name,
        "photo": Codec.JPEG.name,
        "flat": Codec.FILL.name,
        "damage": "bytes",
        "scroll": "copy",
        "executor": "thread",
    }
    emit(result)


if __name__ == "__main__":
    main()
