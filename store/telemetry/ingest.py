"""Ingestion: one transaction stores a batch of devices' records idempotently and fans
them out to the ledger, the events, the latest properties and the rollup markers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import Base, Device
from store.telemetry.common import hour_of, utc
from store.telemetry.events import TelemetryEvent
from store.telemetry.records import TelemetryProperties, TelemetryRecord
from store.telemetry.series import TelemetryRollupPending
from telemetry.records import Event, Metrics, Properties, Record


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What one device's records became: `new` ones (stored now) and duplicates."""

    new: list[Record]
    duplicates: int


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
                    "ts": utc(record.ts),
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
            hours.add((device_id, hour_of(utc(record.ts))))
        elif isinstance(record, Event):
            events.append(
                {
                    "device_id": device_id,
                    "seq": record.seq,
                    "ts": utc(record.ts),
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
                ts=utc(record.ts),
                updated_at=received_at,
                data=data,
            )
        )
    elif row.seq < record.seq:
        row.seq, row.ts, row.updated_at, row.data = record.seq, utc(record.ts), received_at, data
    else:
        return
    model = record.values.get("model")
    if model:
        session.execute(update(Device).where(Device.id == device_id).values(model=model[:255]))
