"""The relay's security events in the shared, hash-chained audit trail (R30).

What the relay records is what only the relay sees happen: bridges (remote access
streams) opened, refused and closed, instructions delivered to devices, tunnels closed
because of revocation or replacement, certificates renewed over the tunnel -- and the
security events of its features (desktop joins, telemetry naming another device...):
one writer for the whole relay (features get it from `FeatureHost.audit`). Events go
through `store.portal.append_audit` with ``actor="relay:<relay id>"``.

Recording never blocks or fails the action it records: events queue in memory (at
most MAX_BACKLOG; beyond that they are dropped and counted, and the drop is logged)
and a `DbWriter` writes them in batches from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from relay_server.dbwriter import DbWriter
from store.db import session_scope
from store.portal import append_audit

# Security events are rare (a handful per remote session); 10,000 queued means the
# database has been away for a long while. Memory stays bounded; drops are counted.
MAX_BACKLOG = 10_000
# Batches are written this often; an event is in the database within about this delay.
FLUSH_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class AuditEvent:
    kind: str
    outcome: str
    summary: str
    device_id: str | None = None
    source: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class AuditLog:
    """Queue of relay security events, written by one background task."""

    def __init__(self, engine: Engine, relay_id: str) -> None:
        self._engine = engine
        self._actor = f"relay:{relay_id}"
        self._writer: DbWriter[AuditEvent, None] = DbWriter(
            "audit-writer", self._write, interval=FLUSH_INTERVAL, max_queued=MAX_BACKLOG
        )

    def record(
        self,
        kind: str,
        summary: str,
        *,
        outcome: str = "success",
        device_id: str | None = None,
        source: str | None = None,
        **details: Any,
    ) -> None:
        """Queue one event (never blocks, never raises)."""
        self._writer.put_nowait(AuditEvent(kind, outcome, summary, device_id, source, details))

    def pending(self) -> int:
        return self._writer.pending()

    @property
    def written(self) -> int:
        return self._writer.stats.items

    @property
    def dropped(self) -> int:
        return self._writer.stats.dropped

    async def start(self) -> None:
        await self._writer.start()

    async def flush(self) -> None:
        """Write everything queued now (tests)."""
        await self._writer.flush()

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        await self._writer.stop()

    def _write(self, batch: list[AuditEvent]) -> None:
        with session_scope(self._engine) as session:
            for event in batch:
                append_audit(
                    session,
                    event.kind,
                    outcome=event.outcome,
                    actor=self._actor,
                    source=event.source,
                    device_id=event.device_id,
                    summary=event.summary,
                    details=event.details,
                    now=event.at,
                )
