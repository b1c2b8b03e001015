"""Telemetry records: the only shapes of data that leave a device (R28).

Three kinds, each sequence-numbered per device by the agent's spool:

* ``metrics`` -- one poll: ``{"seq", "ts", "kind": "metrics", "values": {key: number}}``
* ``event``   -- an error code or event from a device source:
  ``{"seq", "ts", "kind": "event", "code", "severity", "source", "message"}``
* ``props``   -- device properties: ``{"seq", "ts", "kind": "props", "values": {key: text}}``

Every field is allow-listed: metric names come from `METRIC_NAMES` (plus ``device.*``
readings of plug-in sources), property keys from `PROPERTY_KEYS` (plus
``software.*`` versions); event messages are free text and therefore scrubbed
(`telemetry.scrub`) on the agent before they are spooled, and again by the relay.
A record never names its device: the relay takes the device from the TLS
certificate; a record that carries a ``device`` anyway must name the same one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

KIND_METRICS = "metrics"
KIND_EVENT = "event"
KIND_PROPS = "props"

# -- limits (each bounds what one hostile agent can make the relay parse and store) --
#: A poll has ~20 values; 64 leaves room for disks, sensors and processes.
MAX_METRICS = 64
#: Properties are a handful of identifiers and versions.
MAX_PROPERTIES = 32
MAX_PROPERTY_VALUE = 128
#: Equipment error codes are short identifiers (E4012, TUBE.ARC.7).
MAX_CODE = 32
MAX_SOURCE = 32
#: One log line's message after its timestamp, level and code; longer is truncated by
#: the agent, refused by the relay.
MAX_MESSAGE = 1024
#: Sequence numbers are JSON-safe integers (the spool starts them at the creation
#: time in microseconds, see `agent.telemetry.spool`).
MAX_SEQ = 2**53 - 1
#: Timestamps before 2000 are a device with a dead clock battery: refused.
EARLIEST_TS = 946_684_800.0
#: Timestamps further ahead than this of the relay's clock are refused.
MAX_FUTURE_SKEW = 86_400.0

#: Error codes for refused records (short, stable, sent back to the agent).
ERR_BAD_RECORD = "bad_record"
ERR_NOT_ALLOWED = "not_allowed"
ERR_TOO_LARGE = "too_large"
ERR_BAD_TS = "bad_ts"
ERR_WRONG_DEVICE = "wrong_device"

METRIC_NAMES = frozenset(
    {
        "cpu.percent",
        "cpu.load1",
        "mem.percent",
        "mem.available_mb",
        "swap.percent",
        "disk.percent",  # label: mount point
        "disk.free_gb",  # label: mount point
        "disk.read_kbps",
        "disk.write_kbps",
        "net.sent_kbps",
        "net.recv_kbps",
        "temp.c",  # label: sensor
        "uptime.h",
        "proc.up",  # label: equipment process name; 1 running, 0 not
        "proc.cpu",  # label: process
        "proc.rss_mb",  # label: process
        "agent.cpu",
        "agent.rss_mb",
        "agent.spool_records",
        "agent.spool_kb",
        "agent.dropped_routine",  # cumulative counters of the spool's drop policy
        "agent.dropped_urgent",
        "agent.rejected",
    }
)
#: Readings of plug-in device sources: ``device.<name>``.
DEVICE_METRIC = re.compile(r"device\.[a-z][a-z0-9_]{0,39}")
#: ``name`` or ``name:label``; labels are mount points, sensors and process names from
#: the agent's configuration, never data read from the device's files.
METRIC_KEY = re.compile(r"(?P<name>[a-z][a-z0-9_.]{0,47})(?::(?P<label>[A-Za-z0-9_./-]{1,64}))?")

PROPERTY_KEYS = frozenset(
    {
        "model",
        "serial",
        "vendor",
        "hostname",
        "software_version",
        "firmware_version",
        "os",
        "os_version",
        "agent_version",
    }
)
#: Versions of named software components: ``software.<component>``.
SOFTWARE_PROPERTY = re.compile(r"software\.[a-z][a-z0-9_-]{0,39}")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]*")
CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,31}")
SOURCE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


class Severity(IntEnum):
    """How soon an event matters. URGENT is sent at once and opens an alarm."""

    ROUTINE = 0
    WARNING = 1
    URGENT = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        """``"routine"`` / ``"warning"`` / ``"urgent"`` (any case); ValueError otherwise."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r} (routine, warning, urgent)") from None


class RecordError(ValueError):
    """A record is refused; `code` is one of the ERR_* strings (safe to send back)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Metrics:
    seq: int
    ts: float
    values: dict[str, float]

    kind = KIND_METRICS

    @property
    def urgent(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    ts: float
    code: str
    severity: Severity
    source: str
    message: str

    kind = KIND_EVENT

    @property
    def urgent(self) -> bool:
        return self.severity is Severity.URGENT


@dataclass(frozen=True, slots=True)
class Properties:
    seq: int
    ts: float
    values: dict[str, str]

    kind = KIND_PROPS

    @property
    def urgent(self) -> bool:
        return False


Record = Metrics | Event | Properties


def metric_allowed(key: str) -> bool:
    """True if `key` (``name`` or ``name:label``) is an allow-listed metric."""
    match = METRIC_KEY.fullmatch(key)
    if match is None:
        return False
    name = match["name"]
    return name in METRIC_NAMES or DEVICE_METRIC.fullmatch(name) is not None


def property_allowed(key: str) -> bool:
    return key in PROPERTY_KEYS or SOFTWARE_PROPERTY.fullmatch(key) is not None


def to_wire(record: Record) -> dict[str, Any]:
    """The JSON object of `record` (the inverse of `parse_record`)."""
    base: dict[str, Any] = {"seq": record.seq, "ts": record.ts, "kind": record.kind}
    if isinstance(record, Event):
        base.update(
            code=record.code,
            severity=record.severity.label,
            source=record.source,
            message=record.message,
        )
    else:
        base["values"] = record.values
    return base


def parse_record(obj: Any, *, now: float, device_id: str | None = None) -> Record:
    """Validate one record object from the wire. Raises RecordError (never anything else).

    `now` is the receiver's clock (for the timestamp sanity bound); `device_id` is the
    sender's identity from its certificate: a record naming another device is refused.
    """
    if not isinstance(obj, dict):
        raise RecordError(ERR_BAD_RECORD, "a record must be an object")
    claimed = obj.get("device")
    if claimed is not None and claimed != device_id:
        raise RecordError(ERR_WRONG_DEVICE, "record names another device")
    seq = obj.get("seq")
    if type(seq) is not int or not 0 < seq <= MAX_SEQ:
        raise RecordError(ERR_BAD_RECORD, '"seq" must be a positive integer')
    ts = obj.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        raise RecordError(ERR_BAD_RECORD, '"ts" must be a number')
    if not EARLIEST_TS <= ts <= now + MAX_FUTURE_SKEW:
        raise RecordError(ERR_BAD_TS, '"ts" is outside the plausible range')
    kind = obj.get("kind")
    allowed_keys = _KEYS.get(kind) if isinstance(kind, str) else None
    if allowed_keys is None:
        raise RecordError(ERR_BAD_RECORD, '"kind" must be metrics, event or props')
    extra = obj.keys() - allowed_keys
    if extra:
        raise RecordError(ERR_NOT_ALLOWED, "fields not in the allow-list")
    ts = float(ts)  # an int timestamp is a float one
    if kind == KIND_METRICS:
        return Metrics(seq, ts, _metric_values(obj.get("values")))
    if kind == KIND_PROPS:
        return Properties(seq, ts, _property_values(obj.get("values")))
    return Event(
        seq,
        ts,
        _text(obj.get("code"), CODE, "code"),
        _severity(obj.get("severity")),
        _text(obj.get("source"), SOURCE, "source"),
        _message(obj.get("message")),
    )


_COMMON = frozenset({"seq", "ts", "kind", "device"})
_KEYS = {
    KIND_METRICS: _COMMON | {"values"},
    KIND_PROPS: _COMMON | {"values"},
    KIND_EVENT: _COMMON | {"code", "severity", "source", "message"},
}


def _metric_values(values: Any) -> dict[str, float]:
    if not isinstance(values, dict) or not values:
        raise RecordError(ERR_BAD_RECORD, '"values" must be a non-empty object')
    if len(values) > MAX_METRICS:
        raise RecordError(ERR_TOO_LARGE, f"more than {MAX_METRICS} metrics")
    out: dict[str, float] = {}
    for key, value in values.items():
        if not metric_allowed(key):
            raise RecordError(ERR_NOT_ALLOWED, "metric not in the allow-list")
        if type(value) not in (int, float) or not math.isfinite(value):
            raise RecordError(ERR_BAD_RECORD, "metric values must be finite numbers")
        out[key] = float(value)
    return out


def _property_values(values: Any) -> dict[str, str]:
    if not isinstance(values, dict) or not values:
        raise RecordError(ERR_BAD_RECORD, '"values" must be a non-empty object')
    if len(values) > MAX_PROPERTIES:
        raise RecordError(ERR_TOO_LARGE, f"more than {MAX_PROPERTIES} properties")
    out: dict[str, str] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not property_allowed(key):
            raise RecordError(ERR_NOT_ALLOWED, "property not in the allow-list")
        if not isinstance(value, str) or len(value) > MAX_PROPERTY_VALUE:
            raise RecordError(ERR_BAD_RECORD, "property values must be short strings")
        if not _PRINTABLE.fullmatch(value):
            raise RecordError(ERR_BAD_RECORD, "property values must be printable")
        out[key] = value
    return out


def _text(value: Any, pattern: re.Pattern[str], name: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise RecordError(ERR_BAD_RECORD, f'"{name}" is missing or malformed')
    return value


def _severity(value: Any) -> Severity:
    if not isinstance(value, str):
        raise RecordError(ERR_BAD_RECORD, '"severity" must be routine, warning or urgent')
    try:
        return Severity.parse(value)
    except ValueError:
        raise RecordError(ERR_BAD_RECORD, '"severity" must be routine, warning or urgent') from None


def _message(value: Any) -> str:
    if not isinstance(value, str):
        raise RecordError(ERR_BAD_RECORD, '"message" must be a string')
    if len(value) > MAX_MESSAGE:
        raise RecordError(ERR_TOO_LARGE, f'"message" longer than {MAX_MESSAGE} characters')
    return value
