"""Notifications of alarms (``telemetry_notifications``): every one decided -- sent,
failed, or suppressed as a duplicate or by the rate limit -- is a row, so the limits
hold across relay restarts and across relays."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, Index, Integer, String, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from store.models import Base
from store.telemetry.alarms import TelemetryAlarm
from store.telemetry.common import BigId

NOTIFY_PENDING = "pending"
NOTIFY_SENT = "sent"
NOTIFY_FAILED = "failed"
NOTIFY_DUPLICATE = "duplicate"
NOTIFY_RATE_LIMITED = "rate_limited"


class TelemetryNotification(Base):
    """Every notification decided: sent, failed, or suppressed (duplicate / rate limit)."""

    __tablename__ = "telemetry_notifications"
    __table_args__ = (
        Index("ix_telemetry_notifications_target_created", "target", "created_at"),
        Index("ix_telemetry_notifications_dedup_created", "dedup_key", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime]
    alarm_id: Mapped[int | None] = mapped_column(ForeignKey(TelemetryAlarm.id, ondelete="SET NULL"))
    rule_id: Mapped[int | None] = mapped_column(Integer)
    device_id: Mapped[str | None] = mapped_column(String(36))
    channel: Mapped[str] = mapped_column(String(8))
    target: Mapped[str] = mapped_column(String(254))
    dedup_key: Mapped[str] = mapped_column(String(400))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(String(200))


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
