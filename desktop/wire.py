"""The desktop channel's messages: screen updates and cursor out, input and settings in.

One message is one tunnel message (the tunnel frames and reassembles it). All integers
are big-endian; ``i16``/``i8`` are two's complement. The first byte is the type.

Device -> viewer::

    0x01 FRAME          flags:u8 seq:u32 monitor:u8 width:u16 height:u16 count:u16
                        count x (x:u16 y:u16 w:u16 h:u16 codec:u8 length:u32)
                        then the ``count`` payloads, back to back, in header order
    0x02 CURSOR_POS     x:i16 y:i16 visible:u8                 (relative to the monitor)
    0x03 CURSOR_SHAPE   serial:u32 hot_x:u16 hot_y:u16 w:u16 h:u16 rgba:(w*h*4 bytes)
    0x04 MONITORS       current:u8 count:u8 count x (left:i32 top:i32 w:u16 h:u16 primary:u8)
    0x05 CLIPBOARD      text:utf-8 (rest of message)           (also viewer -> device)

Viewer -> device::

    0x10 POINTER        x:u16 y:u16 buttons:u8    absolute, relative to the monitor;
                                                  bit 0 left, bit 1 middle, bit 2 right
    0x11 WHEEL          dx:i8 dy:i8               notches; dy > 0 scrolls down
    0x12 KEY            down:u8 keysym:u32        X11 keysym (Unicode: 0x01000000 + cp)
    0x13 REFRESH        (empty)                   send the whole screen next
    0x14 SELECT_MONITOR index:u8                  0 = all monitors, 1.. = one
    0x15 SETTINGS       max_fps:u8 quality:u8     0 = device default / adapt to the link

Relay -> device (on the same channel; the relay refuses it from a viewer)::

    0x16 RIGHTS         clipboard:u8              the viewer's clipboard right changed

CLIPBOARD needs the clipboard right, which the relay gives in the channel's meta and
updates with RIGHTS; both ends enforce it (the relay filters, the device reads or
writes its clipboard only while the right stands, and writes only in a control session).

FRAME ``flags``: bit 0 ``FINAL`` (last message of this screen update: the viewer
paints once it has it), bit 1 ``FULL`` (the update covers the whole screen: a viewer
that lost track may resync here). A large update is split into several FRAME messages
with the same ``seq``; ``seq`` increases by one per update. Rectangles are applied in
order and must lie inside ``width`` x ``height``.

Codecs: ``FILL`` (payload ``r g b``, a solid rectangle), ``JPEG`` (a baseline JPEG of
exactly ``w`` x ``h``), ``WEBP_LOSSLESS`` (a lossless WebP of ``w`` x ``h``), ``COPY``
(payload ``src_x:u16 src_y:u16``: copy ``w`` x ``h`` pixels from there on the viewer's
own picture, as it is when this rectangle is applied; scrolled content). The choice
between them is measured in ``docs/desktop-encoding.md``.

The decoders check everything (type, exact length, reserved bits, ranges, the
limits below, payload magic, UTF-8) and raise only :class:`WireError`, whatever
the input; they do not decode images. Encoders raise ``ValueError`` for values
outside the format: that is a local bug, not a peer's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from .geometry import Rect

# -- limits ----------------------------------------------------------------------------

MAX_MESSAGE: Final = 4 * 1024 * 1024
"""Largest message either side sends or accepts. The encoder keeps each image below
~1.6 MiB (it splits large regions) and packs updates into parts of at most
:data:`PART_BUDGET`, so a frame never needs more; the bound is what a viewer buffers."""

PART_BUDGET: Final = 1024 * 1024
"""Soft size of one FRAME part. Smaller parts let the viewer start decoding earlier
and let input and control messages interleave sooner on a slow link."""

MAX_SIDE: Final = 16384
"""Largest screen or rectangle side: X11's own limit on a screen dimension."""

MAX_RECTS: Final = 4096
"""Rectangles per FRAME message: a 4K screen has 2040 tiles of 64x64, so twice that."""

MAX_CURSOR_SIDE: Final = 256
"""Largest cursor image side (accessibility cursors reach 256 px); 256 KiB of RGBA."""

MAX_MONITORS: Final = 16
"""Monitors listed (index 0, the whole desktop, included)."""

MAX_CLIPBOARD: Final = 256 * 1024
"""Clipboard text in UTF-8 bytes: pasted text, not file transfer (the files channel)."""

MAX_WHEEL_STEPS: Final = 32
"""Notches per WHEEL message and axis, so one message injects a bounded number of
button clicks; viewers send one message per wheel event anyway."""

MAX_KEYSYM: Final = 0x1FFF_FFFF
"""X11 keysyms are 29-bit values."""

MAX_FPS: Final = 60
"""Highest frame rate a viewer may ask for; the device's own cap may be lower."""

BUTTON_MASK: Final = 0b111
"""POINTER buttons: left, middle, right. The wheel has its own message."""


class WireError(Exception):
    """A received desktop message is malformed or outside the limits. The text is a
    local diagnostic; the peer gets the channel's error code, never this text."""


class MessageType(IntEnum):
    FRAME = 0x01
    CURSOR_POS = 0x02
    CURSOR_SHAPE = 0x03
    MONITORS = 0x04
    CLIPBOARD = 0x05
    POINTER = 0x10
    WHEEL = 0x11
    KEY = 0x12
    REFRESH = 0x13
    SELECT_MONITOR = 0x14
    SETTINGS = 0x15
    RIGHTS = 0x16


class Codec(IntEnum):
    """How one rectangle's payload is encoded."""

    FILL = 1
    JPEG = 2
    WEBP_LOSSLESS = 3
    COPY = 4


FLAG_FINAL: Final = 0x01
FLAG_FULL: Final = 0x02

_FRAME: Final = struct.Struct("!BBIBHHH")
_RECT: Final = struct.Struct("!HHHHBI")
_CURSOR_POS: Final = struct.Struct("!BhhB")
_CURSOR_SHAPE: Final = struct.Struct("!BIHHHH")
_MONITORS: Final = struct.Struct("!BBB")
_MONITOR: Final = struct.Struct("!iiHHB")
_POINTER: Final = struct.Struct("!BHHB")
_WHEEL: Final = struct.Struct("!Bbb")
_KEY: Final = struct.Struct("!BBI")
_SELECT: Final = struct.Struct("!BB")
_SETTINGS: Final = struct.Struct("!BBB")
_RIGHTS: Final = struct.Struct("!BB")

_COPY: Final = struct.Struct("!HH")
_JPEG_MAGIC: Final = b"\xff\xd8\xff"


def _pack(layout: struct.Struct, *values: int) -> bytes:
    """``layout.pack`` with out-of-range values reported as the ``ValueError`` they are."""
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise ValueError(f"value out of range for the wire format: {exc}") from None


def copy_payload(src_x: int, src_y: int) -> bytes:
    """The payload of a ``COPY`` rectangle."""
    return _pack(_COPY, src_x, src_y)


def copy_source(data: bytes) -> tuple[int, int]:
    """``(src_x, src_y)`` of a ``COPY`` payload (already validated if it was decoded)."""
    x, y = _COPY.unpack(data)
    return x, y


def _payload_ok(codec: Codec, data: bytes, rect: Rect, width: int, height: int) -> bool:
    if codec is Codec.FILL:
        return len(data) == 3
    if codec is Codec.COPY:
        if len(data) != _COPY.size:
            return False
        src_x, src_y = _COPY.unpack(data)
        return bool(src_x + rect.w <= width and src_y + rect.h <= height)
    if codec is Codec.JPEG:
        return data.startswith(_JPEG_MAGIC)
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"


# -- messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedRect:
    """One rectangle of a screen update and its encoded pixels."""

    rect: Rect
    codec: Codec
    data: bytes


@dataclass(frozen=True, slots=True)
class FrameUpdate:
    """One FRAME message: all or part (``final=False``) of screen update ``seq``."""

    seq: int
    monitor: int
    width: int
    height: int
    rects: tuple[EncodedRect, ...]
    final: bool = True
    full: bool = False

    def encode(self) -> bytes:
        if not (0 < self.width <= MAX_SIDE and 0 < self.height <= MAX_SIDE):
            raise ValueError(f"screen {self.width}x{self.height} out of range")
        if not 0 < len(self.rects) <= MAX_RECTS or not 0 <= self.monitor < MAX_MONITORS:
            raise ValueError(f"{len(self.rects)} rectangles, monitor {self.monitor}")
        flags = (FLAG_FINAL if self.final else 0) | (FLAG_FULL if self.full else 0)
        parts = [
            _pack(
                _FRAME,
                MessageType.FRAME,
                flags,
                self.seq,
                self.monitor,
                self.width,
                self.height,
                len(self.rects),
            )
        ]
        for r in self.rects:
            x, y, w, h = r.rect
            if w <= 0 or h <= 0:
                raise ValueError(f"bad rectangle {r.rect}")
            if x + w > self.width or y + h > self.height:
                raise ValueError(f"rectangle {r.rect} outside {self.width}x{self.height}")
            if not _payload_ok(r.codec, r.data, r.rect, self.width, self.height):
                raise ValueError(f"payload is not a valid {r.codec.name}")
            parts.append(_pack(_RECT, x, y, w, h, r.codec, len(r.data)))
        parts.extend(r.data for r in self.rects)
        data = b"".join(parts)
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"FRAME message of {len(data)} bytes")
        return data


@dataclass(frozen=True, slots=True)
class CursorPosition:
    """Where the pointer is, relative to the streamed monitor (may be outside it)."""

    x: int
    y: int
    visible: bool = True

    def encode(self) -> bytes:
        return _pack(_CURSOR_POS, MessageType.CURSOR_POS, self.x, self.y, int(self.visible))


@dataclass(frozen=True, slots=True)
class CursorShape:
    """The pointer image, straight (not premultiplied) RGBA; ``serial`` changes with it."""

    serial: int
    hot_x: int
    hot_y: int
    width: int
    height: int
    rgba: bytes

    def encode(self) -> bytes:
        _check_cursor(self.width, self.height, self.hot_x, self.hot_y, len(self.rgba), ValueError)
        head = _pack(
            _CURSOR_SHAPE,
            MessageType.CURSOR_SHAPE,
            self.serial,
            self.hot_x,
            self.hot_y,
            self.width,
            self.height,
        )
        return head + self.rgba


@dataclass(frozen=True, slots=True)
class MonitorEntry:
    left: int
    top: int
    width: int
    height: int
    primary: bool = False


@dataclass(frozen=True, slots=True)
class MonitorList:
    """The monitors a viewer can pick from (entry ``i`` is index ``i``; 0 = all) and
    the one being streamed."""

    monitors: tuple[MonitorEntry, ...]
    current: int

    def encode(self) -> bytes:
        if not (1 <= len(self.monitors) <= MAX_MONITORS and 0 <= self.current < len(self.monitors)):
            raise ValueError("bad monitor list")
        parts = [_pack(_MONITORS, MessageType.MONITORS, self.current, len(self.monitors))]
        for m in self.monitors:
            if not (0 < m.width <= MAX_SIDE and 0 < m.height <= MAX_SIDE):
                raise ValueError(f"monitor {m} out of range")
            parts.append(_pack(_MONITOR, m.left, m.top, m.width, m.height, int(m.primary)))
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Clipboard:
    """Clipboard text, in either direction."""

    text: str

    def encode(self) -> bytes:
        data = self.text.encode("utf-8")
        if len(data) > MAX_CLIPBOARD:
            raise ValueError(f"clipboard text of {len(data)} bytes")
        return bytes([MessageType.CLIPBOARD]) + data


@dataclass(frozen=True, slots=True)
class PointerEvent:
    """Pointer at ``(x, y)`` of the monitor with ``buttons`` held (bit 0 = left)."""

    x: int
    y: int
    buttons: int

    def encode(self) -> bytes:
        if self.buttons & ~BUTTON_MASK:
            raise ValueError(f"buttons {self.buttons:#x}")
        return _pack(_POINTER, MessageType.POINTER, self.x, self.y, self.buttons)


@dataclass(frozen=True, slots=True)
class WheelEvent:
    """Wheel notches: ``dy > 0`` scrolls down, ``dx > 0`` right."""

    dx: int
    dy: int

    def encode(self) -> bytes:
        _check_wheel(self.dx, self.dy, ValueError)
        return _pack(_WHEEL, MessageType.WHEEL, self.dx, self.dy)


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """A key pressed (``down``) or released, named by the keysym it produces."""

    keysym: int
    down: bool

    def encode(self) -> bytes:
        if not 0 < self.keysym <= MAX_KEYSYM:
            raise ValueError(f"keysym {self.keysym:#x}")
        return _pack(_KEY, MessageType.KEY, int(self.down), self.keysym)


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """The viewer lost its picture (reconnect, resize): send the whole screen."""

    def encode(self) -> bytes:
        return bytes([MessageType.REFRESH])


@dataclass(frozen=True, slots=True)
class SelectMonitor:
    index: int

    def encode(self) -> bytes:
        if not 0 <= self.index < MAX_MONITORS:
            raise ValueError(f"monitor {self.index}")
        return _pack(_SELECT, MessageType.SELECT_MONITOR, self.index)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """The viewer's wishes: ``max_fps`` (0 = device default) and JPEG ``quality``
    (0 = adapt to the link, else 1..100). The device's own caps still apply."""

    max_fps: int = 0
    quality: int = 0

    def encode(self) -> bytes:
        _check_settings(self.max_fps, self.quality, ValueError)
        return _pack(_SETTINGS, MessageType.SETTINGS, self.max_fps, self.quality)


@dataclass(frozen=True, slots=True)
class Rights:
    """From the relay: whether the viewer may use the clipboard from now on."""

    clipboard: bool

    def encode(self) -> bytes:
        return _pack(_RIGHTS, MessageType.RIGHTS, int(self.clipboard))


def frame_messages(
    seq: int, monitor: int, width: int, height: int, rects: list[EncodedRect], full: bool
) -> list[bytes]:
    """One screen update as FRAME messages: rectangles in order, a new part whenever
    the current one would pass :data:`PART_BUDGET` or :data:`MAX_RECTS`; the last part
    is ``final``. Each rectangle must fit a message on its own (the encoder's job)."""
    if not rects:
        raise ValueError("an update needs at least one rectangle")
    groups: list[list[EncodedRect]] = [[]]
    size = 0
    for r in rects:
        cost = _RECT.size + len(r.data)
        if groups[-1] and (size + cost > PART_BUDGET or len(groups[-1]) == MAX_RECTS):
            groups.append([])
            size = 0
        groups[-1].append(r)
        size += cost
    last = len(groups) - 1
    return [
        FrameUpdate(seq, monitor, width, height, tuple(g), final=i == last, full=full).encode()
        for i, g in enumerate(groups)
    ]


DeviceMessage = FrameUpdate | CursorPosition | CursorShape | MonitorList | Clipboard
"""What the device sends and a viewer decodes."""

ViewerMessage = (
    PointerEvent
    | WheelEvent
    | KeyEvent
    | Clipboard
    | RefreshRequest
    | SelectMonitor
    | StreamSettings
    | Rights
)
"""What a viewer (or, for `Rights`, only the relay) sends and the device decodes."""


# -- shared checks (one rule, two error types: ValueError when encoding, WireError when decoding)


def _check_cursor(
    w: int, h: int, hot_x: int, hot_y: int, size: int, error: type[Exception]
) -> None:
    if not (0 < w <= MAX_CURSOR_SIDE and 0 < h <= MAX_CURSOR_SIDE):
        raise error(f"cursor {w}x{h} out of range")
    if not (hot_x < w and hot_y < h):
        raise error("cursor hotspot outside the image")
    if size != w * h * 4:
        raise error("cursor image size does not match")


def _check_wheel(dx: int, dy: int, error: type[Exception]) -> None:
    if not (abs(dx) <= MAX_WHEEL_STEPS and abs(dy) <= MAX_WHEEL_STEPS) or dx == dy == 0:
        raise error(f"wheel ({dx}, {dy})")


def _check_settings(max_fps: int, quality: int, error: type[Exception]) -> None:
    if not (0 <= max_fps <= MAX_FPS and 0 <= quality <= 100):
        raise error(f"settings fps={max_fps} quality={quality}")


# -- decoding --------------------------------------------------------------------------


def _exact(data: bytes, layout: struct.Struct, name: str) -> tuple[int, ...]:
    if len(data) != layout.size:
        raise WireError(f"{name}: {len(data)} bytes, expected {layout.size}")
    return layout.unpack(data)


def _type_of(data: bytes) -> int:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError("message is not bytes")
    if not data:
        raise WireError("empty message")
    if len(data) > MAX_MESSAGE:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data[0]


def _decode_clipboard(data: bytes) -> Clipboard:
    body = bytes(data[1:])
    if len(body) > MAX_CLIPBOARD:
        raise WireError(f"clipboard text of {len(body)} bytes")
    try:
        return Clipboard(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise WireError("clipboard text is not UTF-8") from None


def _decode_frame(data: bytes) -> FrameUpdate:
    if len(data) < _FRAME.size:
        raise WireError("FRAME: truncated header")
    _, flags, seq, monitor, width, height, count = _FRAME.unpack_from(data)
    if flags & ~(FLAG_FINAL | FLAG_FULL):
        raise WireError(f"FRAME: reserved flags {flags:#x}")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise WireError(f"FRAME: screen {width}x{height}")
    if not 0 < count <= MAX_RECTS or monitor >= MAX_MONITORS:
        raise WireError(f"FRAME: {count} rectangles, monitor {monitor}")
    offset = _FRAME.size + count * _RECT.size
    if len(data) < offset:
        raise WireError("FRAME: truncated rectangle headers")
    rects = []
    for i in range(count):
        x, y, w, h, codec_id, length = _RECT.unpack_from(data, _FRAME.size + i * _RECT.size)
        if w == 0 or h == 0 or x + w > width or y + h > height:
            raise WireError(f"FRAME: rectangle {i} ({x},{y},{w},{h}) outside {width}x{height}")
        try:
            codec = Codec(codec_id)
        except ValueError:
            raise WireError(f"FRAME: rectangle {i} has unknown codec {codec_id}") from None
        if length > len(data) - offset:
            raise WireError(f"FRAME: rectangle {i} payload truncated")
        payload = bytes(data[offset : offset + length])
        rect = Rect(x, y, w, h)
        if not _payload_ok(codec, payload, rect, width, height):
            raise WireError(f"FRAME: rectangle {i} payload is not a valid {codec.name}")
        offset += length
        rects.append(EncodedRect(rect, codec, payload))
    if offset != len(data):
        raise WireError(f"FRAME: {len(data) - offset} trailing bytes")
    return FrameUpdate(
        seq, monitor, width, height, tuple(rects), bool(flags & FLAG_FINAL), bool(flags & FLAG_FULL)
    )


def _decode_cursor_shape(data: bytes) -> CursorShape:
    if len(data) < _CURSOR_SHAPE.size:
        raise WireError("CURSOR_SHAPE: truncated header")
    _, serial, hot_x, hot_y, w, h = _CURSOR_SHAPE.unpack_from(data)
    _check_cursor(w, h, hot_x, hot_y, len(data) - _CURSOR_SHAPE.size, WireError)
    return CursorShape(serial, hot_x, hot_y, w, h, bytes(data[_CURSOR_SHAPE.size :]))


def _decode_monitors(data: bytes) -> MonitorList:
    if len(data) < _MONITORS.size:
        raise WireError("MONITORS: truncated header")
    _, current, count = _MONITORS.unpack_from(data)
    if not (1 <= count <= MAX_MONITORS and current < count):
        raise WireError(f"MONITORS: {count} monitors, current {current}")
    if len(data) != _MONITORS.size + count * _MONITOR.size:
        raise WireError("MONITORS: length does not match the count")
    entries = []
    for i in range(count):
        left, top, w, h, primary = _MONITOR.unpack_from(data, _MONITORS.size + i * _MONITOR.size)
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or primary > 1:
            raise WireError(f"MONITORS: entry {i} invalid")
        entries.append(MonitorEntry(left, top, w, h, bool(primary)))
    return MonitorList(tuple(entries), current)


def decode_device_message(data: bytes) -> DeviceMessage:
    """Parse a message a device sent (the viewer's side). Raises only :class:`WireError`."""
    kind = _type_of(data)
    if kind == MessageType.FRAME:
        return _decode_frame(data)
    if kind == MessageType.CURSOR_POS:
        _, x, y, visible = _exact(data, _CURSOR_POS, "CURSOR_POS")
        if visible not in (0, 1):
            raise WireError("CURSOR_POS: visible must be 0 or 1")
        return CursorPosition(x, y, bool(visible))
    if kind == MessageType.CURSOR_SHAPE:
        return _decode_cursor_shape(data)
    if kind == MessageType.MONITORS:
        return _decode_monitors(data)
    if kind == MessageType.CLIPBOARD:
        return _decode_clipboard(data)
    raise WireError(f"unexpected message type {kind:#x} from a device")


def decode_viewer_message(data: bytes) -> ViewerMessage:
    """Parse a message a viewer sent (the device's side). Raises only :class:`WireError`."""
    kind = _type_of(data)
    if kind == MessageType.POINTER:
        _, x, y, buttons = _exact(data, _POINTER, "POINTER")
        if buttons & ~BUTTON_MASK:
            raise WireError(f"POINTER: unknown buttons {buttons:#x}")
        return PointerEvent(x, y, buttons)
    if kind == MessageType.WHEEL:
        _, dx, dy = _exact(data, _WHEEL, "WHEEL")
        _check_wheel(dx, dy, WireError)
        return WheelEvent(dx, dy)
    if kind == MessageType.KEY:
        _, down, keysym = _exact(data, _KEY, "KEY")
        if down not in (0, 1) or not 0 < keysym <= MAX_KEYSYM:
            raise WireError(f"KEY: down={down} keysym={keysym:#x}")
        return KeyEvent(keysym, bool(down))
    if kind == MessageType.CLIPBOARD:
        return _decode_clipboard(data)
    if kind == MessageType.REFRESH:
        if len(data) != 1:
            raise WireError("REFRESH: takes no payload")
        return RefreshRequest()
    if kind == MessageType.SELECT_MONITOR:
        _, index = _exact(data, _SELECT, "SELECT_MONITOR")
        if index >= MAX_MONITORS:
            raise WireError(f"SELECT_MONITOR: index {index}")
        return SelectMonitor(index)
    if kind == MessageType.SETTINGS:
        _, max_fps, quality = _exact(data, _SETTINGS, "SETTINGS")
        _check_settings(max_fps, quality, WireError)
        return StreamSettings(max_fps, quality)
    if kind == MessageType.RIGHTS:
        _, clipboard = _exact(data, _RIGHTS, "RIGHTS")
        if clipboard not in (0, 1):
            raise WireError("RIGHTS: clipboard must be 0 or 1")
        return Rights(bool(clipboard))
    raise WireError(f"unexpected message type {kind:#x} from a viewer")
