"""Metric series: hourly aggregates, their downsampling from raw records, and the chart
history read from either.

Tables: ``telemetry_hourly`` (count/min/max/sum per device, hour and metric) and
``telemetry_rollup_pending`` ((device, hour) pairs whose aggregates must be recomputed,
marked by `store.telemetry.ingest`). `downsample` recomputes the hours that received
data; the relay runs it every few minutes, and `store.telemetry.retention.prune` needs
it run to completion first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Float, ForeignKey, Index, Integer, String, delete, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from store.models import Base
from store.telemetry.common import hour_of
from store.telemetry.records import RAW_RETENTION, TelemetryRecord
from telemetry.records import Metrics

#: Hourly aggregates are kept this long (R3: the whole history, at hourly resolution).
HOURLY_RETENTION = timedelta(days=730)
#: Charts over spans up to this read raw samples; longer spans read hourly aggregates.
RAW_CHART_SPAN = timedelta(days=3)
#: Points a chart gets at most (more would be more than its pixels).
MAX_CHART_POINTS = 2000
#: Hours recomputed per `downsample` call (bounded work per maintenance tick).
DOWNSAMPLE_BATCH = 500


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
            TelemetryHourly.hour >= hour_of(start),
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
    current = hour_of(now)
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
