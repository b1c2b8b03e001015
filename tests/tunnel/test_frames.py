"""The frame codec: round trips, rejects, and no exception but FrameError on any input."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.errors import ErrorCode, FrameError
from tunnel.frames import (
    AcceptFrame,
    CloseFrame,
    CreditFrame,
    DataFrame,
    Frame,
    FrameType,
    GoAwayFrame,
    OpenFrame,
    PingFrame,
    PongFrame,
    RefuseFrame,
    ResetFrame,
    decode_frame,
    encode_reason,
)
from tunnel.limits import MAX_CHUNK, MAX_FRAME_SIZE, MAX_META, MAX_REASON, MAX_WINDOW

channel_ids = st.integers(1, 0xFFFF_FFFF)
codes = st.sampled_from(ErrorCode)
reasons = st.text(max_size=64)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
metas = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


@st.composite
def windows(draw: st.DrawFn) -> tuple[int, int]:
    window = draw(st.integers(1, MAX_WINDOW))
    return window, draw(st.integers(1, window))


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from(FrameType))
    cid = draw(channel_ids)
    if kind in (FrameType.OPEN, FrameType.ACCEPT):
        window, max_message = draw(windows())
        cls = OpenFrame if kind is FrameType.OPEN else AcceptFrame
        return cls(cid, window, max_message, draw(metas))
    if kind is FrameType.REFUSE:
        return RefuseFrame(cid, draw(codes), draw(reasons))
    if kind is FrameType.RESET:
        return ResetFrame(cid, draw(codes), draw(reasons))
    if kind is FrameType.DATA:
        return DataFrame(cid, draw(st.binary(min_size=1, max_size=2048)), draw(st.booleans()))
    if kind is FrameType.CREDIT:
        return CreditFrame(cid, draw(st.integers(1, MAX_WINDOW)))
    if kind is FrameType.CLOSE:
        return CloseFrame(cid)
    if kind is FrameType.PING:
        return PingFrame(draw(st.integers(0, 2**64 - 1)))
    if kind is FrameType.PONG:
        return PongFrame(draw(st.integers(0, 2**64 - 1)))
    return GoAwayFrame(draw(codes), draw(st.integers(0, 2**32 - 1)), draw(reasons))


@given(frames())
def test_round_trip(frame: Frame) -> None:
    data = frame.encode()
    assert len(data) <= MAX_FRAME_SIZE
    decoded = decode_frame(data)
    assert type(decoded) is type(frame)
    assert decoded == frame
    assert decoded.encode() == data


@given(st.binary(max_size=MAX_FRAME_SIZE + 64))
def test_arbitrary_bytes_only_raise_frame_error(data: bytes) -> None:
    try:
        decode_frame(data)
    except FrameError as exc:
        assert exc.code in (ErrorCode.PROTOCOL_ERROR, ErrorCode.FRAME_TOO_LARGE)


json_texts = st.one_of(
    st.builds(json.dumps, metas),
    st.lists(
        st.sampled_from(["1e2", "1e999", "-0.0", "NaN", '"\\ud800"', '"x"', "[]"]), max_size=900
    ).map(lambda items: '{"a":[' + ",".join(items) + "]}"),
    st.text(max_size=64).map(lambda t: '{"k":"' + t + '"}'),
)


@given(st.sampled_from([OpenFrame, AcceptFrame]), json_texts)
def test_any_accepted_meta_can_be_sent_on(cls: type[OpenFrame], text: str) -> None:
    """Metadata a relay receives, it can always forward: decoding never accepts
    anything (NaN, 1e999, lone surrogates, a re-encoding above MAX_META) that
    encoding would refuse."""
    try:
        frame = decode_frame(cls(1, 10, 10, {}).encode()[:-2] + text.encode(errors="surrogatepass"))
    except FrameError:
        return
    assert decode_frame(frame.encode()) == frame


@given(frames(), st.data())
def test_mutated_frames_only_raise_frame_error(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(frame.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(FrameError):
        decode_frame(bytes(raw[:cut]))


def header(frame_type: int, flags: int = 0, channel: int = 1) -> bytes:
    return struct.pack("!BBI", frame_type, flags, channel)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"\x04\x00\x00\x00\x01", "short header"),
        (header(0), "type 0"),
        (header(11), "type 11"),
        (header(255), "type 255"),
        (header(4), "empty DATA"),
        (header(4, 0x02) + b"x", "reserved DATA flag"),
        (header(4, channel=0) + b"x", "DATA on channel 0"),
        (header(6, 1), "flags on CLOSE"),
        (header(6) + b"x", "CLOSE with payload"),
        (header(8, channel=1) + bytes(8), "PING on a channel"),
        (header(10, channel=3) + bytes(6), "GOAWAY on a channel"),
        (header(5, channel=0) + struct.pack("!I", 1), "CREDIT on channel 0"),
        (header(8, channel=0) + bytes(7), "short PING"),
        (header(9, channel=0) + bytes(9), "long PONG"),
        (header(5) + struct.pack("!I", 0), "zero credit"),
        (header(5) + struct.pack("!I", MAX_WINDOW + 1), "credit above any window"),
        (header(5) + bytes(3), "short CREDIT"),
        (header(1) + struct.pack("!II", 10, 11) + b"{}", "max_message > window"),
        (header(1) + struct.pack("!II", 10, 0) + b"{}", "max_message 0"),
        (header(1) + struct.pack("!II", MAX_WINDOW + 1, 1) + b"{}", "window too large"),
        (header(1) + struct.pack("!II", 10, 10) + b"[]", "meta not an object"),
        (header(1) + struct.pack("!II", 10, 10) + b"{", "meta not JSON"),
        (header(1) + struct.pack("!II", 10, 10) + b'{"a":NaN}', "meta with NaN"),
        (header(1) + struct.pack("!II", 10, 10) + b'{"a":1e999}', "meta with inf"),
        (header(1) + struct.pack("!II", 10, 10) + b'{"\\ud800":1}', "lone surrogate"),
        (
            header(1) + struct.pack("!II", 10, 10) + b'{"a":[' + b",".join([b"1e2"] * 1000) + b"]}",
            "meta that re-encodes above MAX_META",
        ),
        (header(1) + struct.pack("!II", 10, 10) + b"\xff", "meta not UTF-8"),
        (header(1) + struct.pack("!II", 10, 10) + b"[" * 4000, "meta nested deeply"),
        (header(1) + struct.pack("!II", 10, 10) + b" " * (MAX_META + 1), "meta too large"),
        (header(2) + struct.pack("!I", 10), "short ACCEPT"),
        (header(3) + b"\x00", "short REFUSE"),
        (header(7) + b"\x00\x01" + b"x" * (MAX_REASON + 1), "reason too long"),
        (header(7) + b"\x00\x01\xc3", "reason not UTF-8"),
        (header(10, channel=0) + bytes(5), "short GOAWAY"),
    ],
)
def test_rejects(data: bytes, why: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_frame(data)
    assert info.value.code is ErrorCode.PROTOCOL_ERROR, why


def test_oversize_frame_is_frame_too_large() -> None:
    with pytest.raises(FrameError) as info:
        decode_frame(header(4) + bytes(MAX_CHUNK + 1))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert isinstance(decode_frame(header(4) + bytes(MAX_CHUNK)), DataFrame)


def test_unknown_error_code_reads_as_internal_error() -> None:
    frame = decode_frame(header(7) + struct.pack("!H", 999) + b"why")
    assert frame == ResetFrame(1, ErrorCode.INTERNAL_ERROR, "why")


def test_reason_is_cut_at_a_character_boundary() -> None:
    raw = encode_reason("é" * 200)  # 400 bytes of 2-byte characters
    assert len(raw) == MAX_REASON
    assert raw.decode() == "é" * 128
    assert len(encode_reason("€" * 100)) == 255  # 3-byte characters: no split character


@pytest.mark.parametrize(
    "bad",
    [
        lambda: OpenFrame(1, 10, 11, {}).encode(),
        lambda: OpenFrame(0, 10, 10, {}).encode(),
        lambda: OpenFrame(1, 10, 10, {"x": "y" * MAX_META}).encode(),
        lambda: OpenFrame(1, 10, 10, {"x": float("nan")}).encode(),
        lambda: DataFrame(1, b"", False).encode(),
        lambda: DataFrame(1, bytes(MAX_CHUNK + 1), False).encode(),
        lambda: CloseFrame(2**32).encode(),
    ],
)
def test_encoders_reject_out_of_limit_arguments(bad: Any) -> None:
    with pytest.raises(ValueError):
        bad()
