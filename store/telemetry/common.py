"""What several telemetry aggregates share: the 64-bit id column, device-clock times and
the portal's scope filter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Integer, select

from store.models import Device

#: SQLite has no auto-incrementing BIGINT primary key; PostgreSQL needs 64 bits for events.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utc(ts: float) -> datetime:
    """A record's Unix time (the device's clock) as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)


def hour_of(moment: datetime) -> datetime:
    """The start of `moment`'s hour: the key of hourly aggregates and rollup markers."""
    return moment.replace(minute=0, second=0, microsecond=0)


def in_scope(column: Any, devices: ColumnElement[bool] | None) -> ColumnElement[bool]:
    """`column` (a device id) names a device matching the `devices` clause."""
    if devices is None:
        return column.is_not(None)  # type: ignore[no-any-return]
    return column.in_(select(Device.id).where(devices))  # type: ignore[no-any-return]
