"""The desktop wire format: round trips, strict rejection, and a decoder that only
ever raises WireError (hypothesis feeds it valid, mutated and arbitrary bytes)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desktop import wire
from desktop.geometry import Rect
from desktop.wire import (
    Clipboard,
    Codec,
    CursorPosition,
    CursorShape,
    EncodedRect,
    FrameUpdate,
    KeyEvent,
    MonitorEntry,
    MonitorList,
    PointerEvent,
    RefreshRequest,
    SelectMonitor,
    StreamSettings,
    WheelEvent,
    WireError,
    decode_device_message,
    decode_viewer_message,
)

JPEG = b"\xff\xd8\xff\xe0" + b"jpeg"
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8L" + b"webp"


@st.composite
def frames(draw: st.DrawFn) -> FrameUpdate:
    width = draw(st.integers(1, wire.MAX_SIDE))
    height = draw(st.integers(1, wire.MAX_SIDE))
    rects = []
    for _ in range(draw(st.integers(1, 8))):
        x = draw(st.integers(0, width - 1))
        y = draw(st.integers(0, height - 1))
        w = draw(st.integers(1, width - x))
        h = draw(st.integers(1, height - y))
        codec = draw(st.sampled_from(Codec))
        if codec is Codec.FILL:
            data = draw(st.binary(min_size=3, max_size=3))
        elif codec is Codec.COPY:
            data = wire.copy_payload(
                draw(st.integers(0, width - w)), draw(st.integers(0, height - h))
            )
        else:
            data = (JPEG if codec is Codec.JPEG else WEBP) + draw(st.binary(max_size=64))
        rects.append(EncodedRect(Rect(x, y, w, h), codec, data))
    return FrameUpdate(
        seq=draw(st.integers(0, 0xFFFF_FFFF)),
        monitor=draw(st.integers(0, wire.MAX_MONITORS - 1)),
        width=width,
        height=height,
        rects=tuple(rects),
        final=draw(st.booleans()),
        full=draw(st.booleans()),
    )


@st.composite
def cursor_shapes(draw: st.DrawFn) -> CursorShape:
    w = draw(st.integers(1, 16))
    h = draw(st.integers(1, 16))
    return CursorShape(
        serial=draw(st.integers(0, 0xFFFF_FFFF)),
        hot_x=draw(st.integers(0, w - 1)),
        hot_y=draw(st.integers(0, h - 1)),
        width=w,
        height=h,
        rgba=draw(st.binary(min_size=w * h * 4, max_size=w * h * 4)),
    )


monitor_entries = st.builds(
    MonitorEntry,
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(1, wire.MAX_SIDE),
    st.integers(1, wire.MAX_SIDE),
    st.booleans(),
)


@st.composite
def monitor_lists(draw: st.DrawFn) -> MonitorList:
    entries = draw(st.lists(monitor_entries, min_size=1, max_size=wire.MAX_MONITORS))
    return MonitorList(tuple(entries), draw(st.integers(0, len(entries) - 1)))


clipboards = st.builds(Clipboard, st.text(max_size=200))
wheel_steps = st.integers(-wire.MAX_WHEEL_STEPS, wire.MAX_WHEEL_STEPS)

device_messages = st.one_of(
    frames(),
    st.builds(
        CursorPosition, st.integers(-0x8000, 0x7FFF), st.integers(-0x8000, 0x7FFF), st.booleans()
    ),
    cursor_shapes(),
    monitor_lists(),
    clipboards,
)
viewer_messages = st.one_of(
    st.builds(PointerEvent, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 7)),
    st.builds(WheelEvent, wheel_steps, wheel_steps).filter(lambda e: (e.dx, e.dy) != (0, 0)),
    st.builds(KeyEvent, st.integers(1, wire.MAX_KEYSYM), st.booleans()),
    clipboards,
    st.just(RefreshRequest()),
    st.builds(SelectMonitor, st.integers(0, wire.MAX_MONITORS - 1)),
    st.builds(StreamSettings, st.integers(0, wire.MAX_FPS), st.integers(0, 100)),
    st.builds(wire.Rights, st.booleans()),
)


@given(device_messages)
def test_device_messages_round_trip(message: wire.DeviceMessage) -> None:
    assert decode_device_message(message.encode()) == message


@given(viewer_messages)
def test_viewer_messages_round_trip(message: wire.ViewerMessage) -> None:
    assert decode_viewer_message(message.encode()) == message


def _decodes_or_wire_error(data: bytes) -> None:
    for decode in (decode_device_message, decode_viewer_message):
        with contextlib.suppress(WireError):
            decode(data)


@settings(max_examples=500)
@given(st.binary(max_size=256))
def test_decoders_raise_only_wire_error_on_arbitrary_bytes(data: bytes) -> None:
    _decodes_or_wire_error(data)


@settings(max_examples=500)
@given(st.one_of(device_messages, viewer_messages), st.data())
def test_decoders_raise_only_wire_error_on_mutated_messages(
    message: wire.DeviceMessage | wire.ViewerMessage, data: st.DataObject
) -> None:
    raw = bytearray(message.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
        if action == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        elif action == "truncate":
            del raw[data.draw(st.integers(0, len(raw))) :]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=8))
    _decodes_or_wire_error(bytes(raw))


def _frame(**changes: object) -> FrameUpdate:
    base = {
        "seq": 7,
        "monitor": 1,
        "width": 100,
        "height": 50,
        "rects": (EncodedRect(Rect(0, 0, 10, 10), Codec.FILL, b"\x01\x02\x03"),),
    }
    return FrameUpdate(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x10\x00\x01\x00\x02\x00", "from a device"),  # a POINTER
        (_frame().encode()[:-1], "truncated"),
        (_frame().encode() + b"\x00", "trailing"),
        (bytes([1, 0x04]) + _frame().encode()[2:], "reserved flags"),
        (
            _frame().encode()[: struct.calcsize("!BBIBHHH")]
            + struct.pack("!HHHHBI", 95, 0, 10, 10, 1, 3)
            + b"abc",
            "outside",
        ),
        (
            _frame().encode()[: struct.calcsize("!BBIBHHH")]
            + struct.pack("!HHHHBI", 0, 0, 10, 10, 9, 3)
            + b"abc",
            "codec",
        ),
        (
            _frame().encode()[: struct.calcsize("!BBIBHHH")]
            + struct.pack("!HHHHBI", 0, 0, 10, 10, 2, 3)
            + b"abc",
            "not a valid JPEG",
        ),
        (
            _frame().encode()[: struct.calcsize("!BBIBHHH")]
            + struct.pack("!HHHHBI", 0, 0, 10, 10, 4, 4)
            + struct.pack("!HH", 91, 0),  # copies from outside the screen
            "not a valid COPY",
        ),
        (struct.pack("!BBIBHHH", 1, 1, 0, 0, 10, 10, 0), " 0 rectangles"),
        (struct.pack("!BBIBHHH", 1, 1, 0, 0, 10, 10, wire.MAX_RECTS + 1), "rectangles"),
        (b"\x05\xff\xfe", "UTF-8"),
        (b"\x05" + b"a" * (wire.MAX_CLIPBOARD + 1), "clipboard"),
        (b"\x01" * (wire.MAX_MESSAGE + 1), "exceeds"),
    ],
)
def test_device_decoder_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        decode_device_message(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes([0x10]) + struct.pack("!HHB", 1, 2, 8), "buttons"),
        (bytes([0x10]) + struct.pack("!HH", 1, 2), "expected"),
        (bytes([0x11]) + struct.pack("!bb", 0, 0), "wheel"),
        (bytes([0x11]) + struct.pack("!bb", wire.MAX_WHEEL_STEPS + 1, 0), "wheel"),
        (bytes([0x12]) + struct.pack("!BI", 1, 0), "keysym"),
        (bytes([0x12]) + struct.pack("!BI", 2, 0x61), "down"),
        (bytes([0x12]) + struct.pack("!BI", 1, wire.MAX_KEYSYM + 1), "keysym"),
        (b"\x13\x00", "no payload"),
        (bytes([0x14, wire.MAX_MONITORS]), "index"),
        (bytes([0x15, wire.MAX_FPS + 1, 0]), "settings"),
        (bytes([0x15, 30, 101]), "settings"),
        (b"\x16\x02", "RIGHTS"),
        (b"\x16", "RIGHTS"),
        (_frame().encode(), "from a viewer"),
    ],
)
def test_viewer_decoder_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        decode_viewer_message(data)


def test_encoders_refuse_values_outside_the_format() -> None:
    with pytest.raises(ValueError, match="outside"):
        _frame(rects=(EncodedRect(Rect(95, 0, 10, 10), Codec.FILL, b"abc"),)).encode()
    with pytest.raises(ValueError, match="JPEG"):
        _frame(rects=(EncodedRect(Rect(0, 0, 10, 10), Codec.JPEG, b"png?"),)).encode()
    with pytest.raises(ValueError, match="range"):
        _frame(seq=2**32).encode()
    with pytest.raises(ValueError, match="range"):
        CursorPosition(40000, 0).encode()
    with pytest.raises(ValueError, match="hotspot"):
        CursorShape(1, 4, 0, 4, 4, bytes(64)).encode()
    with pytest.raises(ValueError, match="keysym"):
        KeyEvent(0, True).encode()


def test_frame_messages_split_large_updates_into_bounded_parts() -> None:
    big = WEBP + bytes(400 * 1024)
    rects = [EncodedRect(Rect(0, i, 100, 1), Codec.WEBP_LOSSLESS, big) for i in range(7)]
    rects += [EncodedRect(Rect(i % 100, 9, 1, 1), Codec.FILL, b"\x00\x00\x00") for i in range(5000)]
    messages = wire.frame_messages(3, 1, 100, 10, rects, full=False)
    decoded = [decode_device_message(m) for m in messages]
    assert all(isinstance(d, FrameUpdate) for d in decoded)
    frames_ = [d for d in decoded if isinstance(d, FrameUpdate)]
    assert [f.final for f in frames_] == [False] * (len(frames_) - 1) + [True]
    assert {f.seq for f in frames_} == {3}
    assert [r for f in frames_ for r in f.rects] == rects  # all of them, in order
    assert all(len(m) <= wire.PART_BUDGET + wire.MAX_RECTS * 13 + 64 for m in messages)
    assert all(len(f.rects) <= wire.MAX_RECTS for f in frames_)
    with pytest.raises(ValueError, match="at least one"):
        wire.frame_messages(1, 1, 10, 10, [], full=True)
