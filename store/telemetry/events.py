"""Error codes and events from device sources (``telemetry_events``): the lists the
portal shows, of one device or of a user's fleet. Written by `store.telemetry.ingest`."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    ForeignKey,
    Index,
    Select,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from store.models import Base, Device
from store.telemetry.common import BigId, in_scope
from telemetry.records import Severity

#: Events are kept as long as the hourly aggregates: the whole history (R3).
EVENT_RETENTION = timedelta(days=730)


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


def events_query(
    *,
    device_id: str | None = None,
    devices: ColumnElement[bool] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    min_severity: Severity = Severity.ROUTINE,
    code: str | None = None,
) -> Select[TelemetryEvent]:
    """Events newest first (by device time, then id): of one device, or of every device
    in `devices` scope; `code` matches a prefix. A statement, so a page can count and
    offset it; pages go by offset, not by id: a backlog resent after an outage has newer
    ids than newer events."""
    stmt = select(TelemetryEvent).where(TelemetryEvent.severity >= int(min_severity))
    if device_id is not None:
        stmt = stmt.where(TelemetryEvent.device_id == device_id)
    if devices is not None:
        stmt = stmt.where(in_scope(TelemetryEvent.device_id, devices))
    if since is not None:
        stmt = stmt.where(TelemetryEvent.ts >= since)
    if until is not None:
        stmt = stmt.where(TelemetryEvent.ts < until)
    if code:
        stmt = stmt.where(TelemetryEvent.code.startswith(code, autoescape=True))
    return stmt.order_by(TelemetryEvent.ts.desc(), TelemetryEvent.id.desc())


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
    """The newest `limit` events of `events_query` (at most 1000)."""
    stmt = events_query(
        device_id=device_id,
        devices=devices,
        since=since,
        until=until,
        min_severity=min_severity,
        code=code,
    )
    return list(session.scalars(stmt.limit(max(1, min(limit, 1000)))))


def urgent_events(
    session: Session, *, devices: ColumnElement[bool], since: datetime, limit: int
) -> dict[str, tuple[int, datetime]]:
    """Devices in `devices` scope with urgent events since `since`: device id -> (how
    many, the newest one's time); the `limit` devices with the most recent first."""
    rows = session.execute(
        select(TelemetryEvent.device_id, func.count(TelemetryEvent.id), func.max(TelemetryEvent.ts))
        .join(Device, Device.id == TelemetryEvent.device_id)
        .where(
            devices,
            TelemetryEvent.severity >= int(Severity.URGENT),
            TelemetryEvent.ts >= since,
        )
        .group_by(TelemetryEvent.device_id)
        .order_by(func.max(TelemetryEvent.ts).desc())
        .limit(limit)
    )
    return {device_id: (int(n), latest) for device_id, n, latest in rows}
