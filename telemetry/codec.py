"""Messages on the ``telemetry`` channel (sans-I/O): batches up, acks down.

The agent opens one channel of kind ``telemetry`` (OPEN meta ``{"v": 1}``); the relay
accepts with ``{"v": 1, "max_records": MAX_BATCH_RECORDS}`` and a channel
``max_message`` of MAX_MESSAGE, so a larger message resets the channel (the tunnel's
MESSAGE_TOO_LARGE) without touching the agent's other channels. Each message is one
compact UTF-8 JSON object:

agent -> relay::

    {"type": "batch", "batch": 7, "records": [<record>, ...]}

or that JSON compressed with zlib (RFC 1950) when that is smaller (batches over
COMPRESS_MIN bytes; a poll's repeated metric names compress about 4:1). The relay tells
the two apart by the first byte (``{`` is 0x7b, a zlib stream starts 0x78) and inflates
at most MAX_MESSAGE bytes, so a compression bomb is refused as ``too_large``.

relay -> agent, once the batch is committed to the database (never before)::

    {"type": "ack", "batch": 7, "accepted": 5, "duplicates": 1,
     "rejected": [[1732, "not_allowed"]]}
    {"type": "error", "batch": 7, "error": "malformed", "message": "..."}

A batch or a record may name its device (``"device"``); one naming another device
than the sender's certificate is refused (``wrong_device``). An ack covers every
record of the batch: accepted (new), duplicates (already stored: a resend after a
lost ack) and rejected (invalid; resending cannot help). So the agent deletes the
whole batch from its spool on either answer. ``batch`` numbers are the
agent's, per channel; the relay only echoes them. Records are `telemetry.records`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from telemetry.records import (
    ERR_WRONG_DEVICE,
    MAX_SEQ,
    Record,
    RecordError,
    parse_record,
    to_wire,
)

VERSION = 1
#: Largest telemetry message the relay accepts (the channel's max_message). A full
#: batch is ~MAX_BATCH_RECORDS * 0.5 KiB; anything bigger is a broken or hostile agent.
MAX_MESSAGE = 256 * 1024
#: Records per batch: bounds the relay's work per message and the size of an ack.
MAX_BATCH_RECORDS = 500
#: Batches smaller than this go uncompressed (zlib's header would eat the gain).
COMPRESS_MIN = 512

TYPE_BATCH = "batch"
TYPE_ACK = "ack"
TYPE_ERROR = "error"

ERR_MALFORMED = "malformed"
ERR_TOO_LARGE = "too_large"
ERR_TOO_MANY = "too_many_records"
ERR_UNAVAILABLE = "unavailable"


class CodecError(ValueError):
    """A whole message is refused; `code` and `message` are safe to send to the peer."""

    def __init__(self, code: str, message: str, batch: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.batch = batch


@dataclass(frozen=True, slots=True)
class Batch:
    """A parsed batch: its valid records and the refused ones as ``(seq, code)``
    (``seq`` 0 when the record had no usable one)."""

    batch: int
    records: list[Record]
    rejected: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Ack:
    batch: int
    accepted: int
    duplicates: int
    rejected: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorReply:
    batch: int | None
    error: str
    message: str


def encode_record(record: Record) -> bytes:
    """The compact JSON of one record, as the spool stores and the batch carries it."""
    return _dumps(to_wire(record))


def encode_batch(batch: int, records: Sequence[bytes], *, compress: bool = True) -> bytes:
    """A batch from already-encoded records (the spool's bytes go out unchanged),
    zlib-compressed when `compress` and that makes it smaller."""
    data = b'{"type":"batch","batch":%d,"records":[%s]}' % (batch, b",".join(records))
    if compress and len(data) >= COMPRESS_MIN:
        packed = zlib.compress(data, 6)
        if len(packed) < len(data):
            return packed
    return data


def parse_batch(data: bytes, *, now: float, device_id: str) -> Batch:
    """Decode and validate a batch from the device `device_id` (its certificate's id).

    Raises CodecError for a message that is refused as a whole; refused single
    records are listed in `Batch.rejected`.
    """
    if len(data) > MAX_MESSAGE:
        raise CodecError(ERR_TOO_LARGE, f"message exceeds {MAX_MESSAGE} bytes")
    msg = _loads(data if data[:1] == b"{" else _inflate(data))
    batch = msg.get("batch")
    if type(batch) is not int or not 0 <= batch <= MAX_SEQ:
        raise CodecError(ERR_MALFORMED, '"batch" must be a non-negative integer')
    if msg.get("type") != TYPE_BATCH:
        raise CodecError(ERR_MALFORMED, 'only "batch" messages are accepted', batch)
    claimed = msg.get("device")
    if claimed is not None and claimed != device_id:
        raise CodecError(ERR_WRONG_DEVICE, "the batch names another device", batch)
    records = msg.get("records")
    if not isinstance(records, list):
        raise CodecError(ERR_MALFORMED, '"records" must be a list', batch)
    if len(records) > MAX_BATCH_RECORDS:
        raise CodecError(ERR_TOO_MANY, f"more than {MAX_BATCH_RECORDS} records", batch)
    valid: list[Record] = []
    rejected: list[tuple[int, str]] = []
    for obj in records:
        try:
            valid.append(parse_record(obj, now=now, device_id=device_id))
        except RecordError as exc:
            seq = obj.get("seq") if isinstance(obj, dict) else None
            rejected.append((seq if type(seq) is int else 0, exc.code))
    return Batch(batch, valid, rejected)


def encode_ack(ack: Ack) -> bytes:
    return _dumps(
        {
            "type": TYPE_ACK,
            "batch": ack.batch,
            "accepted": ack.accepted,
            "duplicates": ack.duplicates,
            "rejected": [list(r) for r in ack.rejected],
        }
    )


def encode_error(batch: int | None, error: str, message: str) -> bytes:
    return _dumps({"type": TYPE_ERROR, "batch": batch, "error": error, "message": message})


def parse_reply(data: bytes) -> Ack | ErrorReply:
    """Decode the relay's answer (agent side). Raises CodecError."""
    msg = _loads(data)
    batch = msg.get("batch")
    if msg.get("type") == TYPE_ACK and type(batch) is int:
        rejected = msg.get("rejected", [])
        if not isinstance(rejected, list):
            raise CodecError(ERR_MALFORMED, '"rejected" must be a list', batch)
        return Ack(
            batch,
            _count(msg, "accepted"),
            _count(msg, "duplicates"),
            tuple(
                (r[0], str(r[1]))
                for r in rejected
                if isinstance(r, list) and len(r) == 2 and type(r[0]) is int
            ),
        )
    if msg.get("type") == TYPE_ERROR:
        return ErrorReply(
            batch if type(batch) is int else None,
            str(msg.get("error", ERR_MALFORMED))[:64],
            str(msg.get("message", ""))[:256],
        )
    raise CodecError(ERR_MALFORMED, "unknown message type")


def _count(msg: dict[str, Any], key: str) -> int:
    value = msg.get(key, 0)
    return value if type(value) is int and value >= 0 else 0


def _inflate(data: bytes) -> bytes:
    """Decompress at most MAX_MESSAGE bytes of a zlib stream."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_MESSAGE + 1)
    except zlib.error:
        raise CodecError(ERR_MALFORMED, "neither JSON nor a zlib stream") from None
    if len(out) > MAX_MESSAGE or inflater.unconsumed_tail:
        raise CodecError(ERR_TOO_LARGE, f"message inflates beyond {MAX_MESSAGE} bytes")
    if not inflater.eof:
        raise CodecError(ERR_MALFORMED, "truncated zlib stream")
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(data: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise CodecError(ERR_MALFORMED, "not a UTF-8 JSON object") from None
    if not isinstance(msg, dict):
        raise CodecError(ERR_MALFORMED, "not a JSON object")
    return msg


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
