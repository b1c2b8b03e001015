"""Alarms and their comments (``telemetry_alarms``, ``telemetry_alarm_comments``):
opened by an urgent code or a rule, bumped while the problem repeats, acknowledged,
commented, closed; and the fleet's "needs attention" summary of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    CheckConstraint,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from store.models import Base, Customer, Device, Site
from store.telemetry.common import in_scope, utc
from store.telemetry.rules import TelemetryRule
from telemetry.records import Severity

#: A comment is a few sentences.
MAX_COMMENT = 2000
#: Closed alarms are kept this long (open ones until they are closed).
CLOSED_ALARM_RETENTION = timedelta(days=730)

ALARM_OPEN = "open"
ALARM_ACKNOWLEDGED = "acknowledged"
ALARM_CLOSED = "closed"
ACTIVE_STATES = (ALARM_OPEN, ALARM_ACKNOWLEDGED)


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
    rule_id: Mapped[int | None] = mapped_column(ForeignKey(TelemetryRule.id, ondelete="SET NULL"))
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
    when = utc(ts)
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
        stmt = stmt.where(in_scope(TelemetryAlarm.device_id, devices))
    rows = session.execute(stmt).all()
    result = [
        Attention(d, n, Severity(s), latest if latest.tzinfo else latest.replace(tzinfo=UTC))
        for d, n, s, latest in rows
    ]
    result.sort(key=lambda a: (-a.max_severity, -a.latest.timestamp()))
    return result[:limit]
