"""Telemetry tables and the queries on them: ingestion, history, alarms, rules, log uploads.

Tables (migration ``0003``):

* ``telemetry_records``   one row per record an agent sent, keyed by (device, seq): the
  idempotency ledger; metrics records carry their values as JSON (``data``).
* ``telemetry_events``    error codes and events (code, severity, scrubbed message).
* ``telemetry_properties`` the latest device properties per device.
* ``telemetry_hourly``    hourly aggregates per (device, hour, metric): count/min/max/sum.
* ``telemetry_rollup_pending`` (device, hour) pairs whose aggregates must be recomputed.
* ``telemetry_rules``, ``telemetry_alarms``, ``telemetry_alarm_comments``,
  ``telemetry_notifications``, ``telemetry_log_uploads``.

Retention (`prune`): raw records 30 days, hourly aggregates and events 2 years (R3:
the whole history stays, at hourly resolution). `downsample` recomputes the hours
that received data; the relay runs it every few minutes and `prune` runs it first.

Portal functions take a ``devices`` clause on `store.models.Device` (what
``web.scope.Scope.devices()`` returns) to limit fleet-wide lists to a user's scope,
and never audit themselves: the portal records ``web.recorder.record(...)`` in the
same transaction (suggested kinds are in ``docs/telemetry.md``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from store.models import Base, Customer, Device, Presence, Site
from telemetry.records import Event, Metrics, Properties, Record, Severity
from telemetry.rules import Rule, validate_rule

#: SQLite has no auto-incrementing BIGINT primary key; PostgreSQL needs 64 bits for events.
BigId = BigInteger().with_variant(Integer(), "sqlite")

#: Defaults of the retention policy (the issue's "raw 30 days, hourly 2 years").
RAW_RETENTION = timedelta(days=30)
HOURLY_RETENTION = timedelta(days=730)
EVENT_RETENTION = timedelta(days=730)
CLOSED_ALARM_RETENTION = timedelta(days=730)
UPLOAD_RETENTION = timedelta(days=90)
#: Charts over spans up to this read raw samples; longer spans read hourly aggregates.
RAW_CHART_SPAN = timedelta(days=3)
#: Points a chart gets at most (more would be more than its pixels).
MAX_CHART_POINTS = 2000
#: Hours recomputed per `downsample` call (bounded work per maintenance tick).
DOWNSAMPLE_BATCH = 500
#: A comment is a few sentences.
MAX_COMMENT = 2000
MAX_RULE_NAME = 200

ALARM_OPEN = "open"
ALARM_ACKNOWLEDGED = "acknowledged"
ALARM_CLOSED = "closed"
ACTIVE_STATES = (ALARM_OPEN, ALARM_ACKNOWLEDGED)

UPLOAD_REQUESTED = "requested"
UPLOAD_RECEIVING = "receiving"
UPLOAD_COMPLETE = "complete"
UPLOAD_FAILED = "failed"
UPLOAD_REFUSED = "refused"

NOTIFY_PENDING = "pending"
NOTIFY_SENT = "sent"
NOTIFY_FAILED = "failed"
NOTIFY_DUPLICATE = "duplicate"
NOTIFY_RATE_LIMITED = "rate_limited"


# -- models ---------------------------------------------------------------------------------


class TelemetryRecord(Base):
    """Every record received, once: (device, seq) is what makes a resend harmless."""

    __tablename__ = "telemetry_records"
    __table_args__ = (
        Index("ix_telemetry_records_device_ts", "device_id", "ts"),
        Index("ix_telemetry_records_ts", "ts"),
    )

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(8))
    received_at: Mapped[datetime]
    #: JSON ``{metric: value}`` of a metrics record; NULL for other kinds.
    data: Mapped[str | None] = mapped_column(Text)


class TelemetryEvent(Base):
    """An error code or event from a device source; ``message`` is scrubbed text."""

    __tablename__ = "telemetry_events"
    __table_args__ = (
        UniqueConstraint("device_id", "seq", name="uq_telemetry_events_device_seq"),
        Index("ix_telemetry_events_device_ts", "device_id", "ts"),
        Index("ix_telemetry_events_ts", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime]
    received_at: Mapped[datetime]
    code: Mapped[str] = mapped_column(String(32))
    severity: Mapped[int] = mapped_column(SmallInteger)
    source: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class TelemetryProperties(Base):
    """The newest device properties (model, serial, versions) per device."""

    __tablename__ = "telemetry_properties"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime]
    updated_at: Mapped[datetime]
    data: Mapped[str] = mapped_column(Text)


class TelemetryHourly(Base):
    """One metric of one device over one hour: what long-range charts are drawn from."""

    __tablename__ = "telemetry_hourly"
    __table_args__ = (Index("ix_telemetry_hourly_hour", "hour"),)

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    metric: Mapped[str] = mapped_column(String(120), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    sum: Mapped[float] = mapped_column(Float)


class TelemetryRollupPending(Base):
    """An hour of a device that received samples since its aggregates were computed."""

    __tablename__ = "telemetry_rollup_pending"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(primary_key=True)


class TelemetryRule(Base):
    """A rule as typed (``text``, see `telemetry.rules`); validated before it is saved."""

    __tablename__ = "telemetry_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_RULE_NAME))
    text: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime]
    updated_by: Mapped[str | None] = mapped_column(String(64))


class TelemetryAlarm(Base):
    """A problem on a device: opened by an urgent code or a rule, acknowledged, closed.

    At most one alarm per (device, key) is not closed (partial unique index), so a
    repeating problem bumps ``count``/``last_ts`` instead of opening alarm after alarm.
    """

    __tablename__ = "telemetry_alarms"
    __table_args__ = (
        CheckConstraint("state IN ('open', 'acknowledged', 'closed')", name="state"),
        Index(
            "uq_telemetry_alarms_active_key",
            "device_id",
            "key",
            unique=True,
            sqlite_where=text("state != 'closed'"),
            postgresql_where=text("state != 'closed'"),
        ),
        Index("ix_telemetry_alarms_state_opened", "state", "opened_at"),
        Index("ix_telemetry_alarms_device_opened", "device_id", "opened_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(80))
    rule_id: Mapped[int | None] = mapped_column(
        ForeignKey("telemetry_rules.id", ondelete="SET NULL")
    )
    severity: Mapped[int] = mapped_column(SmallInteger)
    state: Mapped[str] = mapped_column(String(16), default=ALARM_OPEN)
    title: Mapped[str] = mapped_column(String(200))
    count: Mapped[int] = mapped_column(Integer, default=1)
    #: Device-clock times of the first and the latest firing.
    first_ts: Mapped[datetime]
    last_ts: Mapped[datetime]
    opened_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    closed_at: Mapped[datetime | None]
    closed_by: Mapped[str | None] = mapped_column(String(64))

    @property
    def severity_label(self) -> str:
        return Severity(self.severity).label


class TelemetryAlarmComment(Base):
    __tablename__ = "telemetry_alarm_comments"
    __table_args__ = (Index("ix_telemetry_alarm_comments_alarm", "alarm_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alarm_id: Mapped[int] = mapped_column(ForeignKey("telemetry_alarms.id", ondelete="CASCADE"))
    ts: Mapped[datetime]
    author: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)


class TelemetryNotification(Base):
    """Every notification decided: sent, failed, or suppressed (duplicate / rate limit)."""

    __tablename__ = "telemetry_notifications"
    __table_args__ = (
        Index("ix_telemetry_notifications_target_created", "target", "created_at"),
        Index("ix_telemetry_notifications_dedup_created", "dedup_key", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime]
    alarm_id: Mapped[int | None] = mapped_column(
        ForeignKey("telemetry_alarms.id", ondelete="SET NULL")
    )
    rule_id: Mapped[int | None] = mapped_column(Integer)
    device_id: Mapped[str | None] = mapped_column(String(36))
    channel: Mapped[str] = mapped_column(String(8))
    target: Mapped[str] = mapped_column(String(254))
    dedup_key: Mapped[str] = mapped_column(String(400))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(String(200))


class TelemetryLogUpload(Base):
    """A log-file upload from a device: requested, receiving, complete (hash verified)."""

    __tablename__ = "telemetry_log_uploads"
    __table_args__ = (
        CheckConstraint(
            "state IN ('requested', 'receiving', 'complete', 'failed', 'refused')", name="state"
        ),
        Index("ix_telemetry_log_uploads_device_created", "device_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=UPLOAD_REQUESTED)
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(String(64))
    #: Path of the stored file relative to the relay's upload directory.
    stored_name: Mapped[str | None] = mapped_column(String(200))


# -- ingestion -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What one device's records became: `new` ones (stored now) and duplicates."""

    new: list[Record]
    duplicates: int


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _insert(session: Session, model: type[Base]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on `model`'s table (a Core statement: executed
    with many rows it becomes multi-row INSERTs, not one round trip per row)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(cast(Table, model.__table__)).on_conflict_do_nothing()


def ingest(
    session: Session,
    batches: Sequence[tuple[str, Sequence[Record]]],
    *,
    received_at: datetime,
) -> list[IngestOutcome]:
    """Store records idempotently on (device, seq); one outcome per batch, in order.

    The device of each batch is the sender's certificate identity (never a record
    field). A record already stored, or repeated within `batches`, is a duplicate. The
    ledger insert itself says which rows are new (``ON CONFLICT DO NOTHING RETURNING``),
    so a resend costs no extra query, and two relays storing the same record at once
    cannot both count it as new.
    """
    seen: set[tuple[str, int]] = set()
    candidates: list[tuple[int, str, Record]] = []
    ledger: list[dict[str, Any]] = []
    for index, (device_id, records) in enumerate(batches):
        for record in records:
            key = (device_id, record.seq)
            if key in seen:
                continue
            seen.add(key)
            candidates.append((index, device_id, record))
            ledger.append(
                {
                    "device_id": device_id,
                    "seq": record.seq,
                    "ts": _utc(record.ts),
                    "kind": record.kind,
                    "received_at": received_at,
                    "data": json.dumps(record.values, separators=(",", ":"))
                    if isinstance(record, Metrics)
                    else None,
                }
            )
    stored: set[tuple[str, int]] = set()
    if ledger:
        table = TelemetryRecord.__table__
        result = session.execute(
            _insert(session, TelemetryRecord).returning(table.c.device_id, table.c.seq), ledger
        )
        stored = {(device_id, seq) for device_id, seq in result}
    news: list[list[Record]] = [[] for _ in batches]
    events: list[dict[str, Any]] = []
    hours: set[tuple[str, datetime]] = set()
    props: dict[str, Properties] = {}
    for index, device_id, record in candidates:
        if (device_id, record.seq) not in stored:
            continue
        news[index].append(record)
        if isinstance(record, Metrics):
            hours.add((device_id, _hour(_utc(record.ts))))
        elif isinstance(record, Event):
            events.append(
                {
                    "device_id": device_id,
                    "seq": record.seq,
                    "ts": _utc(record.ts),
                    "received_at": received_at,
                    "code": record.code,
                    "severity": int(record.severity),
                    "source": record.source,
                    "message": record.message,
                }
            )
        elif device_id not in props or props[device_id].seq < record.seq:
            props[device_id] = record
    if events:
        # With RETURNING, psycopg too gets multi-row INSERTs instead of one per row.
        event_table = cast(Table, TelemetryEvent.__table__)
        session.execute(_insert(session, TelemetryEvent).returning(event_table.c.id), events)
    if hours:
        pending = [{"device_id": d, "hour": h} for d, h in sorted(hours)]
        session.execute(_insert(session, TelemetryRollupPending), pending)
    for device_id, record in props.items():
        _store_properties(session, device_id, record, received_at)
    return [
        IngestOutcome(new, len(records) - len(new))
        for new, (_, records) in zip(news, batches, strict=True)
    ]


def _store_properties(
    session: Session, device_id: str, record: Properties, received_at: datetime
) -> None:
    row = session.get(TelemetryProperties, device_id)
    data = json.dumps(record.values, separators=(",", ":"), sort_keys=True)
    if row is None:
        session.add(
            TelemetryProperties(
                device_id=device_id,
                seq=record.seq,
                ts=_utc(record.ts),
                updated_at=received_at,
                data=data,
            )
        )
    elif row.seq < record.seq:
        row.seq, row.ts, row.updated_at, row.data = record.seq, _utc(record.ts), received_at, data
    else:
        return
    model = record.values.get("model")
    if model:
        session.execute(update(Device).where(Device.id == device_id).values(model=model[:255]))


def high_seq(session: Session, device_id: str) -> int:
    """The highest sequence number stored for `device_id` (0 if none)."""
    value = session.scalar(
        select(func.max(TelemetryRecord.seq)).where(TelemetryRecord.device_id == device_id)
    )
    return int(value or 0)


# -- latest values and history (portal) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latest:
    """A device's newest poll and properties (``None`` where nothing arrived yet)."""

    ts: datetime | None
    values: dict[str, float]
    properties: dict[str, str]
    properties_ts: datetime | None


def latest_values(session: Session, device_id: str) -> Latest:
    """The newest metrics record and the current properties of `device_id`."""
    row = session.execute(
        select(TelemetryRecord.ts, TelemetryRecord.data)
        .where(
            TelemetryRecord.device_id == device_id,
            TelemetryRecord.kind == Metrics.kind,
        )
        .order_by(TelemetryRecord.ts.desc())
        .limit(1)
    ).first()
    props = session.get(TelemetryProperties, device_id)
    return Latest(
        row.ts if row else None,
        json.loads(row.data) if row and row.data else {},
        json.loads(props.data) if props else {},
        props.ts if props else None,
    )


@dataclass(frozen=True, slots=True)
class Point:
    """One chart point: a bucket's start, mean, min and max, and how many samples."""

    t: datetime
    avg: float
    min: float
    max: float
    count: int


@dataclass(frozen=True, slots=True)
class Series:
    """A chart series; `resolution` is ``"raw"`` or ``"hourly"`` and `bucket` its seconds."""

    metric: str
    resolution: str
    bucket: float
    points: list[Point] = field(default_factory=list)


def history(
    session: Session,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    *,
    max_points: int = 500,
    now: datetime | None = None,
) -> Series:
    """`metric` of `device_id` between `start` and `end`, at most `max_points` points.

    Spans up to RAW_CHART_SPAN that are still within raw retention read raw samples;
    longer or older spans read hourly aggregates. Either way points are merged into
    equal buckets when there are more than `max_points` (zooming in gives detail back).
    """
    now = now or datetime.now(UTC)
    max_points = max(1, min(max_points, MAX_CHART_POINTS))
    span = (end - start).total_seconds()
    bucket = max(span / max_points, 1.0)
    if end - start <= RAW_CHART_SPAN and start >= now - RAW_RETENTION:
        rows = session.execute(
            select(TelemetryRecord.ts, TelemetryRecord.data).where(
                TelemetryRecord.device_id == device_id,
                TelemetryRecord.kind == Metrics.kind,
                TelemetryRecord.ts >= start,
                TelemetryRecord.ts < end,
            )
        )
        samples: list[tuple[datetime, float, float, float, int]] = []
        for ts, data in rows:
            value = json.loads(data).get(metric) if data else None
            if value is not None:
                samples.append((ts, value, value, value, 1))
        return Series(metric, "raw", bucket, _buckets(samples, start, bucket))
    hourly = session.execute(
        select(
            TelemetryHourly.hour,
            TelemetryHourly.sum,
            TelemetryHourly.min,
            TelemetryHourly.max,
            TelemetryHourly.count,
        ).where(
            TelemetryHourly.device_id == device_id,
            TelemetryHourly.metric == metric,
            TelemetryHourly.hour >= _hour(start),
            TelemetryHourly.hour < end,
        )
    )
    rows_h = [(hour, total, low, high, n) for hour, total, low, high, n in hourly]
    return Series(
        metric, "hourly", max(bucket, 3600.0), _buckets(rows_h, start, max(bucket, 3600.0))
    )


def _buckets(
    samples: Iterable[tuple[datetime, float, float, float, int]], start: datetime, width: float
) -> list[Point]:
    """Merge (t, sum, min, max, count) samples into buckets of `width` seconds."""
    acc: dict[int, list[float]] = {}
    for t, total, low, high, n in samples:
        index = int((t - start).total_seconds() // width)
        slot = acc.get(index)
        if slot is None:
            acc[index] = [total, low, high, n]
        else:
            slot[0] += total
            slot[1] = min(slot[1], low)
            slot[2] = max(slot[2], high)
            slot[3] += n
    return [
        Point(start + timedelta(seconds=i * width), s / n, lo, hi, int(n))
        for i, (s, lo, hi, n) in sorted(acc.items())
    ]


def metric_names(session: Session, device_id: str) -> list[str]:
    """Metrics the device reported in its latest poll, sorted (a chart picker's choices)."""
    return sorted(latest_values(session, device_id).values)


# -- events ----------------------------------------------------------------------------------


def _in_scope(column: Any, devices: ColumnElement[bool] | None) -> ColumnElement[bool]:
    if devices is None:
        return column.is_not(None)  # type: ignore[no-any-return]
    return column.in_(select(Device.id).where(devices))  # type: ignore[no-any-return]


def list_events(
    session: Session,
    *,
    device_id: str | None = None,
    devices: ColumnElement[bool] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    min_severity: Severity = Severity.ROUTINE,
    code: str | None = None,
    limit: int = 100,
) -> list[TelemetryEvent]:
    """The newest `limit` events, newest first (by device time): of one device, or of
    every device in `devices` scope. `code` matches a prefix. (Pages deeper than that
    page by offset, not by id: a backlog resent after an outage has newer ids than
    newer events.)"""
    stmt = select(TelemetryEvent).where(TelemetryEvent.severity >= int(min_severity))
    if device_id is not None:
        stmt = stmt.where(TelemetryEvent.device_id == device_id)
    if devices is not None:
        stmt = stmt.where(_in_scope(TelemetryEvent.device_id, devices))
    if since is not None:
        stmt = stmt.where(TelemetryEvent.ts >= since)
    if until is not None:
        stmt = stmt.where(TelemetryEvent.ts < until)
    if code:
        stmt = stmt.where(TelemetryEvent.code.startswith(code, autoescape=True))
    stmt = stmt.order_by(TelemetryEvent.ts.desc(), TelemetryEvent.id.desc())
    return list(session.scalars(stmt.limit(max(1, min(limit, 1000)))))


# -- alarms ----------------------------------------------------------------------------------


def raise_alarm(
    session: Session,
    *,
    device_id: str,
    key: str,
    severity: Severity,
    title: str,
    ts: float,
    rule_id: int | None,
    now: datetime,
) -> tuple[TelemetryAlarm, bool]:
    """Open an alarm for (device, key), or bump the active one. Returns (alarm, opened).

    A bump raises the severity if the new firing is more severe, never lowers it.
    """
    when = _utc(ts)
    for _ in range(2):  # a concurrent relay may open the same alarm between our steps
        alarm = session.scalars(
            select(TelemetryAlarm).where(
                TelemetryAlarm.device_id == device_id,
                TelemetryAlarm.key == key,
                TelemetryAlarm.state != ALARM_CLOSED,
            )
        ).first()
        if alarm is not None:
            alarm.count += 1
            alarm.last_ts = max(alarm.last_ts, when)
            alarm.updated_at = now
            alarm.severity = max(alarm.severity, int(severity))
            return alarm, False
        alarm = TelemetryAlarm(
            device_id=device_id,
            key=key[:80],
            rule_id=rule_id,
            severity=int(severity),
            state=ALARM_OPEN,
            title=title[:200],
            count=1,
            first_ts=when,
            last_ts=when,
            opened_at=now,
            updated_at=now,
        )
        if session.get_bind().dialect.name == "sqlite":
            # One writer at a time in SQLite: nobody can open it between our steps (and
            # pysqlite's SAVEPOINTs would commit early).
            session.add(alarm)
            session.flush()
            return alarm, True
        try:
            with session.begin_nested():
                session.add(alarm)
        except IntegrityError:  # the partial unique index: another relay opened it meanwhile
            continue
        return alarm, True
    raise RuntimeError("alarm keeps being opened concurrently")


def escalate_alarm(session: Session, alarm_id: int, severity: Severity, now: datetime) -> None:
    """Raise an alarm's severity to at least `severity` (rule action ``priority``)."""
    session.execute(
        update(TelemetryAlarm)
        .where(TelemetryAlarm.id == alarm_id, TelemetryAlarm.severity < int(severity))
        .values(severity=int(severity), updated_at=now)
    )


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """An alarm with what a list shows next to it."""

    alarm: TelemetryAlarm
    customer: str
    site: str
    comments: int


def list_alarms(
    session: Session,
    *,
    devices: ColumnElement[bool] | None = None,
    device_id: str | None = None,
    states: Sequence[str] = ACTIVE_STATES,
    min_severity: Severity = Severity.ROUTINE,
    limit: int = 100,
    offset: int = 0,
) -> list[AlarmRow]:
    """Alarms most severe and newest first (a fleet page's "needs attention now")."""
    comments = (
        select(func.count(TelemetryAlarmComment.id))
        .where(TelemetryAlarmComment.alarm_id == TelemetryAlarm.id)
        .scalar_subquery()
    )
    stmt = (
        select(TelemetryAlarm, Customer.slug, Site.slug, comments)
        .join(Device, Device.id == TelemetryAlarm.device_id)
        .join(Customer, Customer.id == Device.customer_id)
        .join(Site, Site.id == Device.site_id)
        .where(
            TelemetryAlarm.state.in_(list(states)),
            TelemetryAlarm.severity >= int(min_severity),
        )
    )
    if devices is not None:
        stmt = stmt.where(devices)
    if device_id is not None:
        stmt = stmt.where(TelemetryAlarm.device_id == device_id)
    stmt = stmt.order_by(TelemetryAlarm.severity.desc(), TelemetryAlarm.updated_at.desc())
    rows = session.execute(stmt.limit(max(1, min(limit, 1000))).offset(max(0, offset)))
    return [AlarmRow(a, c, s, n) for a, c, s, n in rows]


def alarm_comments(session: Session, alarm_id: int) -> list[TelemetryAlarmComment]:
    return list(
        session.scalars(
            select(TelemetryAlarmComment)
            .where(TelemetryAlarmComment.alarm_id == alarm_id)
            .order_by(TelemetryAlarmComment.id)
        )
    )


class AlarmStateError(ValueError):
    """The alarm cannot make that transition (e.g. acknowledging a closed alarm)."""


def acknowledge_alarm(
    session: Session, alarm: TelemetryAlarm, *, actor: str, now: datetime | None = None
) -> None:
    """open -> acknowledged ("someone is on it"). The caller checked scope and permission."""
    if alarm.state != ALARM_OPEN:
        raise AlarmStateError(f"an alarm that is {alarm.state} cannot be acknowledged")
    now = now or datetime.now(UTC)
    alarm.state, alarm.acknowledged_at, alarm.acknowledged_by = ALARM_ACKNOWLEDGED, now, actor
    alarm.updated_at = now


def comment_alarm(
    session: Session,
    alarm: TelemetryAlarm,
    *,
    actor: str,
    text: str,
    now: datetime | None = None,
) -> TelemetryAlarmComment:
    """Add a comment (any state; closed alarms keep their history)."""
    body = text.strip()
    if not body:
        raise ValueError("the comment is empty")
    if len(body) > MAX_COMMENT:
        raise ValueError(f"comments are at most {MAX_COMMENT} characters")
    now = now or datetime.now(UTC)
    comment = TelemetryAlarmComment(alarm_id=alarm.id, ts=now, author=actor, text=body)
    session.add(comment)
    alarm.updated_at = now
    session.flush()
    return comment


def close_alarm(
    session: Session, alarm: TelemetryAlarm, *, actor: str, now: datetime | None = None
) -> None:
    """open/acknowledged -> closed. The next firing of the same problem opens a new alarm."""
    if alarm.state == ALARM_CLOSED:
        raise AlarmStateError("the alarm is already closed")
    now = now or datetime.now(UTC)
    alarm.state, alarm.closed_at, alarm.closed_by, alarm.updated_at = (
        ALARM_CLOSED,
        now,
        actor,
        now,
    )


@dataclass(frozen=True, slots=True)
class Attention:
    """A device that needs attention: its active alarms and the worst severity."""

    device_id: str
    active_alarms: int
    max_severity: Severity
    latest: datetime


def fleet_attention(
    session: Session, *, devices: ColumnElement[bool] | None = None, limit: int = 200
) -> list[Attention]:
    """Devices with active alarms, worst first, then most recently updated."""
    stmt = (
        select(
            TelemetryAlarm.device_id,
            func.count(TelemetryAlarm.id),
            func.max(TelemetryAlarm.severity),
            func.max(TelemetryAlarm.updated_at),
        )
        .where(TelemetryAlarm.state.in_(ACTIVE_STATES))
        .group_by(TelemetryAlarm.device_id)
    )
    if devices is not None:
        stmt = stmt.where(_in_scope(TelemetryAlarm.device_id, devices))
    rows = session.execute(stmt).all()
    result = [
        Attention(d, n, Severity(s), latest if latest.tzinfo else latest.replace(tzinfo=UTC))
        for d, n, s, latest in rows
    ]
    result.sort(key=lambda a: (-a.max_severity, -a.latest.timestamp()))
    return result[:limit]


# -- rules -----------------------------------------------------------------------------------


def list_rules(session: Session) -> list[TelemetryRule]:
    return list(session.scalars(select(TelemetryRule).order_by(TelemetryRule.id)))


def _check_rule(name: str, text: str, webhooks: Iterable[str] | None) -> Rule:
    if not name.strip() or len(name) > MAX_RULE_NAME:
        raise ValueError(f"the rule needs a name of at most {MAX_RULE_NAME} characters")
    return validate_rule(text, webhooks=webhooks)


def create_rule(
    session: Session,
    *,
    name: str,
    text: str,
    actor: str,
    enabled: bool = True,
    webhooks: Iterable[str] | None = None,
    now: datetime | None = None,
) -> TelemetryRule:
    """Validate and save a rule; raises `telemetry.rules.RuleSyntaxError` (a ValueError)."""
    _check_rule(name, text, webhooks)
    now = now or datetime.now(UTC)
    rule = TelemetryRule(
        name=name.strip(),
        text=text.strip(),
        enabled=enabled,
        created_at=now,
        created_by=actor,
        updated_at=now,
        updated_by=actor,
    )
    session.add(rule)
    session.flush()
    return rule


def update_rule(
    session: Session,
    rule: TelemetryRule,
    *,
    name: str,
    text: str,
    enabled: bool,
    actor: str,
    webhooks: Iterable[str] | None = None,
    now: datetime | None = None,
) -> None:
    """Validate and change a rule (its alarms keep pointing at it)."""
    _check_rule(name, text, webhooks)
    rule.name, rule.text, rule.enabled = name.strip(), text.strip(), enabled
    rule.updated_at, rule.updated_by = now or datetime.now(UTC), actor


def delete_rule(session: Session, rule: TelemetryRule) -> None:
    """Delete a rule; its alarms stay (``rule_id`` becomes NULL)."""
    session.delete(rule)


def rules_version(session: Session) -> tuple[int, datetime | None]:
    """(count, newest update) of the rules: relays reload when it changes."""
    count, newest = session.execute(
        select(func.count(TelemetryRule.id), func.max(TelemetryRule.updated_at))
    ).one()
    return int(count), newest


# -- notifications -----------------------------------------------------------------------------


def decide_notification(
    session: Session,
    *,
    channel: str,
    target: str,
    dedup_key: str,
    alarm_id: int | None,
    rule_id: int | None,
    device_id: str | None,
    now: datetime,
    dedup_window: timedelta,
    rate_limit: int,
    rate_window: timedelta,
) -> TelemetryNotification:
    """Record a notification and decide whether it may go out.

    ``duplicate``: the same `dedup_key` went to the same target within `dedup_window`;
    ``rate_limited``: the target got `rate_limit` within `rate_window` already;
    ``pending``: send it, then `finish_notification`. Decided in the database so the
    limits hold across relay restarts and across relays.
    """
    _take_turns(session, f"notify:{channel}:{target}")
    recent = (
        TelemetryNotification.status.in_((NOTIFY_PENDING, NOTIFY_SENT, NOTIFY_FAILED)),
        TelemetryNotification.target == target,
        TelemetryNotification.channel == channel,
    )
    duplicate = session.scalar(
        select(TelemetryNotification.id)
        .where(
            *recent,
            TelemetryNotification.dedup_key == dedup_key,
            TelemetryNotification.created_at >= now - dedup_window,
        )
        .limit(1)
    )
    status = NOTIFY_PENDING
    if duplicate is not None:
        status = NOTIFY_DUPLICATE
    else:
        sent = session.scalar(
            select(func.count(TelemetryNotification.id)).where(
                *recent, TelemetryNotification.created_at >= now - rate_window
            )
        )
        if (sent or 0) >= rate_limit:
            status = NOTIFY_RATE_LIMITED
    row = TelemetryNotification(
        created_at=now,
        alarm_id=alarm_id,
        rule_id=rule_id,
        device_id=device_id,
        channel=channel,
        target=target[:254],
        dedup_key=dedup_key[:400],
        status=status,
        attempts=0,
    )
    session.add(row)
    session.flush()
    return row


def _take_turns(session: Session, key: str) -> None:
    """Serialise deciders of one `key` until the transaction ends.

    Two relays deciding the same notice at once would both find no duplicate under
    READ COMMITTED; on PostgreSQL a transaction-scoped advisory lock makes the second
    wait for the first's commit and then see its row. SQLite needs nothing: it is the
    single-node store, and it admits one writer at a time.
    """
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest, signed=True))))


def finish_notification(
    session: Session,
    notification_id: int,
    *,
    ok: bool,
    attempts: int,
    error: str | None,
    now: datetime,
) -> None:
    session.execute(
        update(TelemetryNotification)
        .where(TelemetryNotification.id == notification_id)
        .values(
            status=NOTIFY_SENT if ok else NOTIFY_FAILED,
            attempts=attempts,
            sent_at=now if ok else None,
            error=None if ok else (error or "failed")[:200],
        )
    )


def list_notifications(
    session: Session, *, alarm_id: int | None = None, limit: int = 100
) -> list[TelemetryNotification]:
    stmt = select(TelemetryNotification).order_by(TelemetryNotification.id.desc())
    if alarm_id is not None:
        stmt = stmt.where(TelemetryNotification.alarm_id == alarm_id)
    return list(session.scalars(stmt.limit(limit)))


# -- log uploads -------------------------------------------------------------------------------

#: The instruction action the agent serves (`agent.telemetry.uploads`).
UPLOAD_ACTION = "upload_logs"


def request_log_upload(
    session: Session,
    *,
    device_id: str,
    source: str,
    requested_by: str | None,
    reason: str = "request",
    now: datetime | None = None,
) -> tuple[TelemetryLogUpload, dict[str, Any]]:
    """Create an upload row and return it with the instruction to send to the agent
    (``relay rpc instruct``). The agent answers at once and uploads in the background."""
    now = now or datetime.now(UTC)
    upload = TelemetryLogUpload(
        id=str(uuid.uuid4()),
        device_id=device_id,
        source=source[:32],
        reason=reason,
        requested_by=requested_by,
        state=UPLOAD_REQUESTED,
        received=0,
        created_at=now,
        updated_at=now,
    )
    session.add(upload)
    session.flush()
    return upload, {"action": UPLOAD_ACTION, "upload_id": upload.id, "source": source}


def refuse_log_upload(
    session: Session, upload_id: str, error: str, *, now: datetime | None = None
) -> None:
    """The agent refused the request (e.g. ``forbidden_path``); the caller audits it."""
    session.execute(
        update(TelemetryLogUpload)
        .where(TelemetryLogUpload.id == upload_id)
        .values(state=UPLOAD_REFUSED, error=error[:64], updated_at=now or datetime.now(UTC))
    )


def list_log_uploads(
    session: Session, device_id: str, *, limit: int = 50
) -> list[TelemetryLogUpload]:
    return list(
        session.scalars(
            select(TelemetryLogUpload)
            .where(TelemetryLogUpload.device_id == device_id)
            .order_by(TelemetryLogUpload.created_at.desc())
            .limit(limit)
        )
    )


def downloadable_upload(
    session: Session, upload_id: str, device_id: str
) -> TelemetryLogUpload | None:
    """The complete upload `upload_id` of `device_id` (None otherwise): what a download
    route serves, from ``<upload_dir>/<stored_name>``, after its scope check."""
    return session.scalars(
        select(TelemetryLogUpload).where(
            TelemetryLogUpload.id == upload_id,
            TelemetryLogUpload.device_id == device_id,
            TelemetryLogUpload.state == UPLOAD_COMPLETE,
        )
    ).first()


# -- retention and downsampling ------------------------------------------------------------------


def downsample(session: Session, *, now: datetime, limit: int = DOWNSAMPLE_BATCH) -> int:
    """Recompute the hourly aggregates of hours that received samples.

    Returns how many *finished* hours were rolled up: their pending markers are removed,
    so a caller loops while a batch came back full (``== limit``) and stops otherwise --
    looping "while not zero" would spin for ever, since the current hour stays pending
    (it is recomputed on each call that reaches it, until it is over). Markers are taken
    oldest hour first, so the current hour is reached once the backlog is done. Late
    samples mark their hour again.
    """
    pending = session.execute(
        select(TelemetryRollupPending.device_id, TelemetryRollupPending.hour)
        .order_by(TelemetryRollupPending.hour)
        .limit(limit)
    ).all()
    current = _hour(now)
    finished = 0
    for device_id, hour in pending:
        if hour < current:
            finished += 1
            # Delete the marker first: it takes SQLite's write lock (and the row lock in
            # PostgreSQL), so samples committed after our read mark the hour again.
            session.execute(
                delete(TelemetryRollupPending).where(
                    TelemetryRollupPending.device_id == device_id,
                    TelemetryRollupPending.hour == hour,
                )
            )
        aggregates: dict[str, list[float]] = {}
        for (data,) in session.execute(
            select(TelemetryRecord.data).where(
                TelemetryRecord.device_id == device_id,
                TelemetryRecord.kind == Metrics.kind,
                TelemetryRecord.ts >= hour,
                TelemetryRecord.ts < hour + timedelta(hours=1),
            )
        ):
            for metric, value in json.loads(data or "{}").items():
                agg = aggregates.get(metric)
                if agg is None:
                    aggregates[metric] = [1, value, value, value]
                else:
                    agg[0] += 1
                    agg[1] = min(agg[1], value)
                    agg[2] = max(agg[2], value)
                    agg[3] += value
        session.execute(
            delete(TelemetryHourly).where(
                TelemetryHourly.device_id == device_id, TelemetryHourly.hour == hour
            )
        )
        if aggregates:
            session.execute(
                insert(TelemetryHourly),
                [
                    {
                        "device_id": device_id,
                        "hour": hour,
                        "metric": metric,
                        "count": int(n),
                        "min": low,
                        "max": high,
                        "sum": total,
                    }
                    for metric, (n, low, high, total) in aggregates.items()
                ],
            )
    return finished


@dataclass(frozen=True, slots=True)
class PruneReport:
    records: int
    events: int
    hourly: int
    alarms: int
    notifications: int
    uploads: list[str]  # stored file names of deleted upload rows (the caller deletes them)


def prune(
    session: Session,
    *,
    now: datetime,
    raw: timedelta = RAW_RETENTION,
    hourly: timedelta = HOURLY_RETENTION,
    events: timedelta = EVENT_RETENTION,
    closed_alarms: timedelta = CLOSED_ALARM_RETENTION,
    uploads: timedelta = UPLOAD_RETENTION,
) -> PruneReport:
    """Delete what is older than its retention. Run `downsample` to completion first,
    or the raw samples of not-yet-aggregated hours are lost for good."""

    def gone(stmt: Any) -> int:
        return int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]

    records = gone(delete(TelemetryRecord).where(TelemetryRecord.ts < now - raw))
    n_events = gone(delete(TelemetryEvent).where(TelemetryEvent.ts < now - events))
    n_hourly = gone(delete(TelemetryHourly).where(TelemetryHourly.hour < now - hourly))
    n_alarms = gone(
        delete(TelemetryAlarm).where(
            TelemetryAlarm.state == ALARM_CLOSED, TelemetryAlarm.closed_at < now - closed_alarms
        )
    )
    n_notifications = gone(
        delete(TelemetryNotification).where(TelemetryNotification.created_at < now - hourly)
    )
    old = TelemetryLogUpload.created_at < now - uploads
    files = [
        name for name in session.scalars(select(TelemetryLogUpload.stored_name).where(old)) if name
    ]
    session.execute(delete(TelemetryLogUpload).where(old))
    return PruneReport(records, n_events, n_hourly, n_alarms, n_notifications, files)


# -- presence (offline rules) --------------------------------------------------------------------


def offline_devices(
    session: Session, relay_id: str
) -> list[tuple[str, str, str, str | None, datetime | None]]:
    """Devices whose presence row names `relay_id` and are offline: (device, customer,
    site, model, disconnected_at). Each relay evaluates offline rules for the devices
    it held last, so two relays do not both fire for one device."""
    rows = session.execute(
        select(Device.id, Customer.slug, Site.slug, Device.model, Presence.disconnected_at)
        .join(Presence, Presence.device_id == Device.id)
        .join(Customer, Customer.id == Device.customer_id)
        .join(Site, Site.id == Device.site_id)
        .where(Presence.relay_id == relay_id, Presence.online.is_(False))
        .where(Device.revoked_at.is_(None))
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]
