"""The frame codec: one tunnel frame <-> the bytes of one binary WebSocket message.

Layout (all integers big-endian)::

    +--------+--------+--------------------------------+----------------------+
    | type:8 | flags:8|          channel:32            | payload (<= 64 KiB)  |
    +--------+--------+--------------------------------+----------------------+

:func:`decode_frame` checks everything that can be checked without connection
state (known type, flags, channel 0 or not, payload size and structure) and raises
only :class:`~tunnel.errors.FrameError`, whatever the input. Encoders raise
``ValueError`` for arguments outside the protocol's limits: that is a local bug.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from .errors import ErrorCode, FrameError
from .limits import HEADER_SIZE, MAX_CHUNK, MAX_FRAME_SIZE, MAX_META, MAX_REASON, MAX_WINDOW


class FrameType(IntEnum):
    """The u8 frame type."""

    OPEN = 1
    ACCEPT = 2
    REFUSE = 3
    DATA = 4
    CREDIT = 5
    CLOSE = 6
    RESET = 7
    PING = 8
    PONG = 9
    GOAWAY = 10


FLAG_MORE: Final = 0x01
"""DATA only: the message continues in the next DATA frame of the same channel."""

HEADER: Final = struct.Struct("!BBI")
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_U64: Final = struct.Struct("!Q")
_WINDOWS: Final = struct.Struct("!II")
_GOAWAY: Final = struct.Struct("!HI")

_DATA: Final = int(FrameType.DATA)
_CREDIT: Final = int(FrameType.CREDIT)
_DATA_TYPE: Final = bytes([_DATA])

assert HEADER.size == HEADER_SIZE


@dataclass(frozen=True, slots=True)
class OpenFrame:
    """Ask the peer for a channel. ``window`` and ``max_message`` are what the *opener*
    will accept; ``meta`` is a JSON object with at least ``"kind"``."""

    channel_id: int
    window: int
    max_message: int
    meta: dict[str, Any]

    def encode(self) -> bytes:
        return _encode_windows(FrameType.OPEN, self.channel_id, self)


@dataclass(frozen=True, slots=True)
class AcceptFrame:
    """Grant an OPEN; ``window``/``max_message`` are what the *acceptor* will accept."""

    channel_id: int
    window: int
    max_message: int
    meta: dict[str, Any]

    def encode(self) -> bytes:
        return _encode_windows(FrameType.ACCEPT, self.channel_id, self)


@dataclass(frozen=True, slots=True)
class RefuseFrame:
    """Decline an OPEN."""

    channel_id: int
    code: ErrorCode
    reason: str

    def encode(self) -> bytes:
        return _encode_error(FrameType.REFUSE, self.channel_id, self.code, self.reason)


@dataclass(frozen=True, slots=True)
class DataFrame:
    """One chunk (1..MAX_CHUNK bytes) of a message; ``more`` = the message continues."""

    channel_id: int
    payload: bytes
    more: bool

    def encode(self) -> bytes:
        if not 0 < len(self.payload) <= MAX_CHUNK:
            raise ValueError("DATA payload must be 1..MAX_CHUNK bytes")
        return encode_data(self.channel_id, self.payload, FLAG_MORE if self.more else 0)


@dataclass(frozen=True, slots=True)
class CreditFrame:
    """Let the peer send ``increment`` more bytes on the channel."""

    channel_id: int
    increment: int

    def encode(self) -> bytes:
        return encode_credit(self.channel_id, self.increment)


@dataclass(frozen=True, slots=True)
class CloseFrame:
    """Half-close: the sender sends no more DATA on this channel (EOF)."""

    channel_id: int

    def encode(self) -> bytes:
        return HEADER.pack(FrameType.CLOSE, 0, _check_channel(self.channel_id))


@dataclass(frozen=True, slots=True)
class ResetFrame:
    """Abort the channel in both directions; queued data is discarded."""

    channel_id: int
    code: ErrorCode
    reason: str

    def encode(self) -> bytes:
        return _encode_error(FrameType.RESET, self.channel_id, self.code, self.reason)


@dataclass(frozen=True, slots=True)
class PingFrame:
    """Keepalive probe (channel 0); the peer echoes ``opaque`` in a PONG."""

    opaque: int

    def encode(self) -> bytes:
        return HEADER.pack(FrameType.PING, 0, 0) + _U64.pack(self.opaque)


@dataclass(frozen=True, slots=True)
class PongFrame:
    """Answer to a PING (channel 0)."""

    opaque: int

    def encode(self) -> bytes:
        return HEADER.pack(FrameType.PONG, 0, 0) + _U64.pack(self.opaque)


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    """The sender takes no new channels; reconnect after ``retry_after_ms`` (channel 0)."""

    code: ErrorCode
    retry_after_ms: int
    reason: str

    def encode(self) -> bytes:
        reason = encode_reason(self.reason)
        return (
            HEADER.pack(FrameType.GOAWAY, 0, 0)
            + _GOAWAY.pack(self.code, self.retry_after_ms)
            + reason
        )


Frame = (
    OpenFrame
    | AcceptFrame
    | RefuseFrame
    | DataFrame
    | CreditFrame
    | CloseFrame
    | ResetFrame
    | PingFrame
    | PongFrame
    | GoAwayFrame
)


# -- encoding helpers ---------------------------------------------------------------


def encode_data_header(channel_id: int, flags: int) -> bytes:
    """The hot path of the sender: a DATA frame's header, written before its chunk
    (kept apart so the chunk is never copied to join them)."""
    return HEADER.pack(_DATA, flags, channel_id)


def encode_data(channel_id: int, payload: bytes | memoryview, flags: int) -> bytes:
    return encode_data_header(channel_id, flags) + payload


def encode_credit(channel_id: int, increment: int) -> bytes:
    return HEADER.pack(_CREDIT, 0, channel_id) + _U32.pack(increment)


def encode_meta(meta: dict[str, Any]) -> bytes:
    """Compact JSON for OPEN/ACCEPT; ``ValueError`` if not serialisable or > MAX_META."""
    raw = json.dumps(meta, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if len(raw) > MAX_META:
        raise ValueError(f"channel metadata is {len(raw)} bytes, limit {MAX_META}")
    return raw


def encode_reason(reason: str) -> bytes:
    """UTF-8 reason cut to MAX_REASON bytes at a character boundary (reasons are hints)."""
    raw = reason.encode()
    if len(raw) > MAX_REASON:
        raw = raw[:MAX_REASON].decode(errors="ignore").encode()
    return raw


def _check_channel(channel_id: int) -> int:
    if not 0 < channel_id <= 0xFFFF_FFFF:
        raise ValueError(f"channel id {channel_id} out of range")
    return channel_id


def check_windows(window: int, max_message: int) -> None:
    """``ValueError`` unless 1 <= max_message <= window <= MAX_WINDOW."""
    if not 1 <= max_message <= window <= MAX_WINDOW:
        raise ValueError(
            f"need 1 <= max_message ({max_message}) <= window ({window}) <= {MAX_WINDOW}"
        )


def _encode_windows(
    frame_type: FrameType, channel_id: int, frame: OpenFrame | AcceptFrame
) -> bytes:
    check_windows(frame.window, frame.max_message)
    return (
        HEADER.pack(frame_type, 0, _check_channel(channel_id))
        + _WINDOWS.pack(frame.window, frame.max_message)
        + encode_meta(frame.meta)
    )


def _encode_error(frame_type: FrameType, channel_id: int, code: ErrorCode, reason: str) -> bytes:
    return (
        HEADER.pack(frame_type, 0, _check_channel(channel_id))
        + _U16.pack(code)
        + encode_reason(reason)
    )


# -- decoding -----------------------------------------------------------------------


def _malformed(detail: str) -> FrameError:
    return FrameError(ErrorCode.PROTOCOL_ERROR, detail)


def _decode_meta(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_META:
        raise _malformed("metadata too large")
    try:
        meta = json.loads(raw.decode())
        # Only accept what we could send on ourselves: a relay forwards metadata, and
        # NaN, 1e999, lone surrogates or a re-encoding above MAX_META would fail there.
        if isinstance(meta, dict):
            encode_meta(meta)
    except (ValueError, RecursionError) as exc:  # UnicodeError is a ValueError
        raise _malformed("metadata is not valid JSON") from exc
    if not isinstance(meta, dict):
        raise _malformed("metadata is not a JSON object")
    return meta


def _decode_reason(raw: bytes) -> str:
    if len(raw) > MAX_REASON:
        raise _malformed("reason too long")
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise _malformed("reason is not UTF-8") from exc


def _decode_windows(payload: bytes) -> tuple[int, int, dict[str, Any]]:
    if len(payload) < _WINDOWS.size:
        raise _malformed("OPEN/ACCEPT payload too short")
    window, max_message = _WINDOWS.unpack_from(payload)
    if not 1 <= max_message <= window <= MAX_WINDOW:
        raise _malformed("window/max_message out of bounds")
    return window, max_message, _decode_meta(payload[_WINDOWS.size :])


def _decode_open(channel_id: int, payload: bytes) -> Frame:
    return OpenFrame(channel_id, *_decode_windows(payload))


def _decode_accept(channel_id: int, payload: bytes) -> Frame:
    return AcceptFrame(channel_id, *_decode_windows(payload))


def _decode_error(payload: bytes) -> tuple[ErrorCode, str]:
    if len(payload) < _U16.size:
        raise _malformed("error payload too short")
    (code,) = _U16.unpack_from(payload)
    return ErrorCode.from_wire(code), _decode_reason(payload[_U16.size :])


def _decode_refuse(channel_id: int, payload: bytes) -> Frame:
    return RefuseFrame(channel_id, *_decode_error(payload))


def _decode_reset(channel_id: int, payload: bytes) -> Frame:
    return ResetFrame(channel_id, *_decode_error(payload))


def _decode_credit(channel_id: int, payload: bytes) -> Frame:
    if len(payload) != _U32.size:
        raise _malformed("CREDIT payload is not 4 bytes")
    (increment,) = _U32.unpack(payload)
    if not 1 <= increment <= MAX_WINDOW:
        raise _malformed("CREDIT increment out of bounds")
    return CreditFrame(channel_id, increment)


def _decode_close(channel_id: int, payload: bytes) -> Frame:
    if payload:
        raise _malformed("CLOSE has a payload")
    return CloseFrame(channel_id)


def _decode_opaque(payload: bytes) -> int:
    if len(payload) != _U64.size:
        raise _malformed("PING/PONG payload is not 8 bytes")
    value: int = _U64.unpack(payload)[0]
    return value


def _decode_ping(channel_id: int, payload: bytes) -> Frame:
    return PingFrame(_decode_opaque(payload))


def _decode_pong(channel_id: int, payload: bytes) -> Frame:
    return PongFrame(_decode_opaque(payload))


def _decode_goaway(channel_id: int, payload: bytes) -> Frame:
    if len(payload) < _GOAWAY.size:
        raise _malformed("GOAWAY payload too short")
    code, retry_after_ms = _GOAWAY.unpack_from(payload)
    return GoAwayFrame(
        ErrorCode.from_wire(code), retry_after_ms, _decode_reason(payload[_GOAWAY.size :])
    )


# Indexed by frame type; DATA is decoded inline (hot path) and has no entry.
_DECODERS: Final = (
    None,
    _decode_open,
    _decode_accept,
    _decode_refuse,
    None,
    _decode_credit,
    _decode_close,
    _decode_reset,
    _decode_ping,
    _decode_pong,
    _decode_goaway,
)
_CONNECTION_TYPES: Final = frozenset({FrameType.PING, FrameType.PONG, FrameType.GOAWAY})


def is_data(data: bytes) -> bool:
    """Whether a message claims to be a DATA frame (then :func:`decode_data_header`)."""
    return data[:1] == _DATA_TYPE


def decode_data_header(data: bytes) -> tuple[int, bool]:
    """Check a DATA frame and return ``(channel_id, more)``; the payload is
    ``data[HEADER_SIZE:]``, left to the caller to slice or view (the receive hot path:
    a relay forwarding chunks passes views on without copying). Raises
    :class:`FrameError` like :func:`decode_frame`."""
    size = len(data)
    if size > MAX_FRAME_SIZE:
        raise FrameError(ErrorCode.FRAME_TOO_LARGE, f"frame of {size} bytes")
    if size < HEADER_SIZE:
        raise _malformed("frame shorter than its header")
    if size == HEADER_SIZE:
        raise _malformed("empty DATA frame")
    frame_type, flags, channel_id = HEADER.unpack_from(data)
    if frame_type != _DATA:
        raise _malformed("not a DATA frame")
    if flags & ~FLAG_MORE:
        raise _malformed("reserved DATA flags set")
    if channel_id == 0:
        raise _malformed("DATA on channel 0")
    return channel_id, bool(flags)


def decode_frame(data: bytes) -> Frame:
    """Parse one WebSocket message into a frame.

    Raises :class:`FrameError` -- and nothing else, for any input -- with
    ``FRAME_TOO_LARGE`` for messages above :data:`MAX_FRAME_SIZE` and
    ``PROTOCOL_ERROR`` for anything else malformed.
    """
    size = len(data)
    if size > MAX_FRAME_SIZE:
        raise FrameError(ErrorCode.FRAME_TOO_LARGE, f"frame of {size} bytes")
    if size < HEADER_SIZE:
        raise _malformed("frame shorter than its header")
    frame_type, flags, channel_id = HEADER.unpack_from(data)
    if frame_type == _DATA:
        channel_id, more = decode_data_header(data)
        return DataFrame(channel_id, data[HEADER_SIZE:], more)
    if not 0 < frame_type < len(_DECODERS):
        raise _malformed("unknown frame type")
    if flags:
        raise _malformed("flags set on a frame that has none")
    if (channel_id == 0) != (frame_type in _CONNECTION_TYPES):
        raise _malformed("frame on the wrong kind of channel")
    decoder = _DECODERS[frame_type]
    assert decoder is not None
    return decoder(channel_id, data[HEADER_SIZE:])
