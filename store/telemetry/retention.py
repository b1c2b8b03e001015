"""Retention: what `prune` deletes, table by table, once it is older than its aggregate's
retention (defaults: raw records 30 days; hourly aggregates, events, closed alarms and
notifications 2 years; uploads 90 days). R3: the whole history stays, at hourly
resolution -- which is why `store.telemetry.series.downsample` must run first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from store.telemetry.alarms import ALARM_CLOSED, CLOSED_ALARM_RETENTION, TelemetryAlarm
from store.telemetry.events import EVENT_RETENTION, TelemetryEvent
from store.telemetry.notifications import TelemetryNotification
from store.telemetry.records import RAW_RETENTION, TelemetryRecord
from store.telemetry.series import HOURLY_RETENTION, TelemetryHourly
from store.telemetry.uploads import UPLOAD_RETENTION, TelemetryLogUpload


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
