"""The program on the benchmark's screen: scripted screen changes, each one numbered.

Run as ``python bench/desktop_workload.py`` with ``DISPLAY`` set (an empty Xvfb of
:data:`WIDTH` x :data:`HEIGHT`, no window manager). It covers the screen with one
override-redirect window and draws with core X requests (python-xlib), so its own CPU
stays small and the X server does the pixel work, the way a native program would.

Modes, switched by JSON lines on stdin (``{"mode": NAME}``):

* ``idle``   -- nothing changes (the screen as the last mode left it).
* ``office`` -- a document window; text is typed into it at :data:`OFFICE_RATE`
  characters per second (anti-aliased TrueType glyphs and a caret).
* ``scroll`` -- a long text page scrolls :data:`SCROLL_STEP` px at
  :data:`MOTION_RATE` steps per second, the way classic X programs scroll: the window
  copies its own pixels up (``XCopyArea``) and draws the exposed strip.
* ``video``  -- full-screen photographic motion at :data:`MOTION_RATE` frames per
  second: a large photo-like texture panned diagonally, so every pixel changes.

Every scripted change also repaints the FRAME MARKER (:data:`FRAME_MARKER`), a counter a
viewer can read back from its canvas: one change = one new value. A mouse button press
anywhere increments the CLICK MARKER (:data:`CLICK_MARKER`) at once (input-to-photon
latency). Markers are rows of :data:`BLOCK` px pure black/white squares, the bits on
top and their complements below, so JPEG cannot turn one value into another unnoticed.

Reports on stdout, one JSON object per line: ``ready``; ``mode_done`` when a mode ends
(``mode``, ``changes``, ``seconds``, ``first``/``last`` marker values painted).
EOF on stdin ends the program.
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import sys
import time
from dataclasses import dataclass
from typing import Any, Final

from PIL import Image, ImageDraw, ImageFilter, ImageFont
from Xlib import X, display
from Xlib.xobject.drawable import Pixmap, Window

WIDTH: Final = 1920
HEIGHT: Final = 1080

BLOCK: Final = 24
"""Side of one marker bit. Bigger than a JPEG MCU (16 px) so a bit's centre is never
touched by ringing from its neighbours, even when the rectangle is not MCU-aligned."""


@dataclass(frozen=True, slots=True)
class Marker:
    """``bits`` squares at ``(x, y)``: row 1 the value (MSB first), row 2 its complement."""

    x: int
    y: int
    bits: int

    @property
    def width(self) -> int:
        return self.bits * BLOCK

    @property
    def height(self) -> int:
        return 2 * BLOCK


FRAME_MARKER: Final = Marker(0, 0, 16)
CLICK_MARKER: Final = Marker(0, 2 * BLOCK, 8)
CLICK_POINT: Final = (WIDTH // 2, HEIGHT // 2)
"""Where the benchmark clicks (any point of the window works)."""

OFFICE_RATE: Final = 10.0
MOTION_RATE: Final = 30.0
SCROLL_STEP: Final = 12
HEADER: Final = 128
"""Top band (markers, a toolbar) that stays put while the page below scrolls."""

FONT_DIR: Final = "/usr/share/fonts/truetype/dejavu"
TEXT_FONT: Final = "DejaVuSans.ttf"
MONO_FONT: Final = "DejaVuSansMono.ttf"

# The largest image one PutImage request carries without BIG-REQUESTS (python-xlib
# does not negotiate it): 2^16 - 1 four-byte units, less the request header.
_MAX_PUT_BYTES: Final = 65535 * 4 - 64

_PROSE: Final = (
    "the device reports its status to the relay every minute while the tunnel stays up "
    "and the engineer opens a session from the portal when the customer agrees to it "
    "configuration values are read from the file at start and checked against the schema "
    "a restart of the service applies them without losing the spooled telemetry records"
)
WORDS: Final = tuple(_PROSE.split())


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(os.path.join(FONT_DIR, name), size)


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


# -- images (rendered once, uploaded to the X server) ---------------------------------


def office_image(rng: random.Random) -> Image.Image:
    """A document editor: title bar, toolbar, sidebar, a page with text and a photo."""
    img = Image.new("RGB", (WIDTH, HEIGHT), (236, 239, 243))
    draw = ImageDraw.Draw(img)
    ui, body, title = font(TEXT_FONT, 14), font(TEXT_FONT, 16), font(TEXT_FONT, 22)
    draw.rectangle((0, 0, WIDTH, HEADER - 1), fill=(44, 62, 80))
    draw.text((420, 12), "Quarterly report.odt - Writer", font=title, fill=(255, 255, 255))
    for i, label in enumerate(("File", "Edit", "View", "Insert", "Format", "Tools", "Help")):
        draw.text((420 + i * 80, 56), label, font=ui, fill=(220, 226, 232))
    for i in range(24):
        x = 420 + i * 40
        draw.rounded_rectangle((x, 88, x + 30, 118), 4, fill=(60 + 7 * i, 110, 160 - 3 * i))
    draw.rectangle((0, HEADER, 300, HEIGHT), fill=(250, 250, 252))
    for i in range(30):
        draw.text(
            (24, HEADER + 16 + i * 30),
            f"Section {i + 1}: {rng.choice(WORDS)}",
            font=ui,
            fill=(40, 40, 60),
        )
    page = (360, HEADER + 24, 1560, HEIGHT - 24)
    draw.rectangle(page, fill=(255, 255, 255), outline=(200, 200, 210))
    for i in range(12):
        draw.text(
            (400, HEADER + 60 + i * 26), sentence(rng, 16)[:130], font=body, fill=(20, 20, 20)
        )
    photo = texture(rng, 360, 240)
    img.paste(photo, (1160, HEADER + 420))
    draw.rectangle((1600, HEADER, WIDTH, HEIGHT), fill=(228, 232, 238))
    for i in range(8):
        y = HEADER + 30 + i * 110
        draw.rectangle((1620, y, 1900, y + 90), fill=(255, 255, 255), outline=(190, 196, 204))
        draw.text((1636, y + 12), f"Comment {i + 1}", font=ui, fill=(90, 60, 20))
        draw.text(
            (1636, y + 40),
            " ".join(rng.choice(WORDS) for _ in range(4)),
            font=ui,
            fill=(60, 60, 60),
        )
    return img


OFFICE_TEXT_BOX: Final = (400, HEADER + 400, 1120, HEIGHT - 60)
"""Where the typed text goes (inside the page, left of the photo)."""


def page_image(rng: random.Random, height: int) -> Image.Image:
    """A long article: headings, paragraphs, code blocks, coloured call-outs."""
    img = Image.new("RGB", (WIDTH, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    body, head, mono = font(TEXT_FONT, 17), font(TEXT_FONT, 28), font(MONO_FONT, 15)
    y = 20
    while y < height - 60:
        kind = rng.random()
        if kind < 0.1:
            draw.text((300, y), sentence(rng, 5), font=head, fill=(20, 40, 90))
            y += 52
        elif kind < 0.2:
            draw.rectangle((300, y, 1500, y + 130), fill=(245, 246, 248), outline=(210, 210, 215))
            for i in range(5):
                draw.text(
                    (320, y + 10 + i * 23),
                    "    " * (i % 3) + sentence(rng, 6),
                    font=mono,
                    fill=(120, 30, 90),
                )
            y += 150
        elif kind < 0.25:
            draw.rounded_rectangle((300, y, 1500, y + 70), 8, fill=(255, 244, 214))
            draw.text((324, y + 22), sentence(rng, 12), font=body, fill=(110, 80, 0))
            y += 90
        else:
            for _ in range(4):
                draw.text((300, y), sentence(rng, 20)[:140], font=body, fill=(33, 33, 33))
                y += 26
            y += 16
    return img


def texture(rng: random.Random, width: int, height: int) -> Image.Image:
    """Photo-like: smooth colour fields, soft shapes and sensor noise."""
    small = Image.new("RGB", (max(2, width // 200), max(2, height // 200)))
    small.putdata(
        [
            (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            for _ in range(small.width * small.height)
        ]
    )
    img = small.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(max(1, width * height // 60000)):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(10, 120)
        draw.ellipse(
            (x - r, y - r, x + r, y + r),
            fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)),
        )
    img = img.filter(ImageFilter.GaussianBlur(6))
    noise = Image.effect_noise((width, height), 18).convert("RGB")
    return Image.blend(img, noise, 0.12)


# -- the X side -----------------------------------------------------------------------


class Screen:
    """One full-screen window and what is drawn on it."""

    def __init__(self) -> None:
        self.d = display.Display()
        screen = self.d.screen()
        self.depth = screen.root_depth
        self.white, self.black = screen.white_pixel, screen.black_pixel
        self.win: Window = screen.root.create_window(
            0,
            0,
            WIDTH,
            HEIGHT,
            0,
            self.depth,
            X.InputOutput,
            X.CopyFromParent,
            background_pixel=self.black,
            override_redirect=True,
            event_mask=X.ButtonPressMask,
        )
        self.gc = self.win.create_gc(foreground=self.white, graphics_exposures=False)
        self.win.map()
        self.d.sync()

    def fileno(self) -> int:
        return int(self.d.fileno())

    def upload(self, img: Image.Image) -> Pixmap:
        """``img`` as a server-side pixmap (uploaded in request-sized strips)."""
        pix: Pixmap = self.win.create_pixmap(img.width, img.height, self.depth)
        self.put(pix, img, 0, 0)
        return pix

    def put(self, drawable: Window | Pixmap, img: Image.Image, x: int, y: int) -> None:
        rows = max(1, _MAX_PUT_BYTES // (img.width * 4))
        for top in range(0, img.height, rows):
            strip = img.crop((0, top, img.width, min(img.height, top + rows)))
            drawable.put_image(
                self.gc,
                x,
                y + top,
                strip.width,
                strip.height,
                X.ZPixmap,
                self.depth,
                0,
                strip.tobytes("raw", "BGRX"),
            )

    def copy(
        self, src: Window | Pixmap, sx: int, sy: int, w: int, h: int, dx: int, dy: int
    ) -> None:
        self.win.copy_area(self.gc, src, sx, sy, w, h, dx, dy)

    def marker(self, m: Marker, value: int) -> None:
        ones, zeros = [], []
        for i in range(m.bits):
            bit = (value >> (m.bits - 1 - i)) & 1
            top = (m.x + i * BLOCK, m.y, BLOCK, BLOCK)
            bottom = (m.x + i * BLOCK, m.y + BLOCK, BLOCK, BLOCK)
            ones.append(top if bit else bottom)
            zeros.append(bottom if bit else top)
        self.gc.change(foreground=self.white)
        self.win.poly_fill_rectangle(self.gc, ones)
        self.gc.change(foreground=self.black)
        self.win.poly_fill_rectangle(self.gc, zeros)

    def markers(self, frame: int, clicks: int) -> None:
        """Both markers, sent to the server now. The click marker is repainted with
        every change too, as a mode may have drawn over it."""
        self.marker(FRAME_MARKER, frame)
        self.marker(CLICK_MARKER, clicks)
        self.d.flush()

    def button_presses(self) -> int:
        """Button presses queued since the last call (events read without blocking)."""
        presses = 0
        while self.d.pending_events():
            if self.d.next_event().type == X.ButtonPress:
                presses += 1
        return presses


# -- modes ------------------------------------------------------------------------------


class Mode:
    """A scripted activity: ``enter`` draws its starting screen, ``step`` one change."""

    rate = 0.0

    def enter(self) -> None:
        pass

    def step(self) -> None:
        pass


class Idle(Mode):
    pass


class Office(Mode):
    rate = OFFICE_RATE

    def __init__(self, screen: Screen, background: Pixmap, rng: random.Random) -> None:
        self.screen, self.background, self.rng = screen, background, rng
        self.font = font(TEXT_FONT, 16)
        self.line_height = 26
        self.text = ""
        self.line = 0
        self.words: list[str] = []  # characters still to type

    def enter(self) -> None:
        self.screen.copy(self.background, 0, 0, WIDTH, HEIGHT, 0, 0)
        self.text, self.line = "", 0

    def step(self) -> None:
        if not self.words:
            self.words = [*sentence(self.rng, 12), " "]
        x0, y0, x1, y1 = OFFICE_TEXT_BOX
        char = self.words.pop(0)
        if x0 + self.font.getlength(self.text + char) > x1:
            self._draw(int(self.font.getlength(self.text)), caret=False)  # caret off this line
            self.text, self.line = "", self.line + 1
            if y0 + (self.line + 1) * self.line_height > y1:
                self.screen.copy(self.background, x0, y0, x1 - x0, y1 - y0, x0, y0)
                self.line = 0
        start = int(self.font.getlength(self.text))
        self.text += char
        self._draw(start, caret=True)

    def _draw(self, start: int, caret: bool) -> None:
        """Redraw the current line from ``start`` px to just past the caret, as an
        editor repaints the cell it changed."""
        x0, y0, _, _ = OFFICE_TEXT_BOX
        end = int(self.font.getlength(self.text)) + 4
        cell = Image.new("RGB", (end - start + 2, self.line_height), (255, 255, 255))
        draw = ImageDraw.Draw(cell)
        draw.text((-start, 3), self.text, font=self.font, fill=(20, 20, 20))
        if caret:
            draw.rectangle((end - start - 2, 2, end - start - 1, self.line_height - 3), fill=0)
        self.screen.put(self.screen.win, cell, x0 + start, y0 + self.line * self.line_height)


class Scroll(Mode):
    rate = MOTION_RATE

    def __init__(self, screen: Screen, header: Pixmap, page: Pixmap, page_height: int) -> None:
        self.screen, self.header, self.page, self.page_height = screen, header, page, page_height
        self.offset = 0

    def _page(self, page_y: int, h: int, dst_y: int) -> None:
        """Draw ``h`` page rows from ``page_y`` (wrapping around) at screen row ``dst_y``."""
        while h > 0:
            y = page_y % self.page_height
            n = min(h, self.page_height - y)
            self.screen.copy(self.page, 0, y, WIDTH, n, 0, dst_y)
            page_y, dst_y, h = page_y + n, dst_y + n, h - n

    def enter(self) -> None:
        self.screen.copy(self.header, 0, 0, WIDTH, HEADER, 0, 0)
        self._page(self.offset, HEIGHT - HEADER, HEADER)

    def step(self) -> None:
        view = HEIGHT - HEADER
        self.screen.copy(
            self.screen.win, 0, HEADER + SCROLL_STEP, WIDTH, view - SCROLL_STEP, 0, HEADER
        )
        self.offset += SCROLL_STEP
        self._page(self.offset + view - SCROLL_STEP, SCROLL_STEP, HEIGHT - SCROLL_STEP)


class Video(Mode):
    rate = MOTION_RATE
    VELOCITY = (7, 5)  # px per frame on each axis; never 0, so no frame is a pure scroll

    def __init__(self, screen: Screen, film: Pixmap, film_size: tuple[int, int]) -> None:
        self.screen, self.film = screen, film
        self.room = (film_size[0] - WIDTH, film_size[1] - HEIGHT)
        self.pos = [0, 0]
        self.vel = list(self.VELOCITY)

    def enter(self) -> None:
        self.step()

    def step(self) -> None:
        for axis in (0, 1):
            nxt = self.pos[axis] + self.vel[axis]
            if not 0 <= nxt <= self.room[axis]:
                self.vel[axis] = -self.vel[axis]
                nxt = self.pos[axis] + self.vel[axis]
            self.pos[axis] = nxt
        self.screen.copy(self.film, self.pos[0], self.pos[1], WIDTH, HEIGHT, 0, 0)


# -- main loop ------------------------------------------------------------------------


def main() -> None:
    rng = random.Random(20240601)
    screen = Screen()
    office_bg = office_image(rng)
    background = screen.upload(office_bg)
    header = screen.upload(office_bg.crop((0, 0, WIDTH, HEADER)))
    page_height = 4 * HEIGHT
    page = screen.upload(page_image(rng, page_height))
    film_size = (WIDTH + 480, HEIGHT + 320)
    film = screen.upload(texture(rng, *film_size))
    modes: dict[str, Mode] = {
        "idle": Idle(),
        "office": Office(screen, background, rng),
        "scroll": Scroll(screen, header, page, page_height),
        "video": Video(screen, film, film_size),
    }
    counter = clicks = 0
    name, mode = "idle", modes["idle"]
    screen.copy(background, 0, 0, WIDTH, HEIGHT, 0, 0)
    screen.markers(counter, clicks)
    screen.d.sync()
    emit("ready")

    started, first, changes = time.monotonic(), counter, 0
    due = math.inf
    stdin = sys.stdin.fileno()
    buffer = b""
    while True:
        timeout = max(0.0, due - time.monotonic()) if due != math.inf else None
        readable, _, _ = select.select([stdin, screen.fileno()], [], [], timeout)
        if stdin in readable:
            chunk = os.read(stdin, 4096)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                wanted = json.loads(line)["mode"]
                emit(
                    "mode_done",
                    mode=name,
                    changes=changes,
                    seconds=round(time.monotonic() - started, 3),
                    first=first,
                    last=counter,
                )
                name, mode = wanted, modes[wanted]
                mode.enter()
                counter = (counter + 1) & 0xFFFF
                screen.markers(counter, clicks)
                started, first, changes = time.monotonic(), counter, 0
                due = started + 1 / mode.rate if mode.rate else math.inf
        presses = screen.button_presses()
        if presses:
            clicks = (clicks + presses) & 0xFF
            screen.markers(counter, clicks)
        now = time.monotonic()
        if now >= due:
            mode.step()
            counter = (counter + 1) & 0xFFFF
            changes += 1
            screen.markers(counter, clicks)
            # Fixed cadence; a late step is not made up with a burst.
            due = max(due + 1 / mode.rate, now)


if __name__ == "__main__":
    main()
