"""The relay's security events in the shared, hash-chained audit trail (R30).

What the relay records is what only the relay sees happen: bridges (remote access
streams) opened, refused and closed, instructions delivered to devices, tunnels closed
because of revocation or replacement, certificates renewed over the tunnel. Events go
through `store.portal.append_audit` with ``actor="relay:<relay id>"``.

Recording never blocks or fails the action it records: events queue in memory (at
most MAX_BACKLOG; beyond that they are dropped and counted, and the drop is logged)
and one task writes them in batches from a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from store.db import session_scope
from store.portal import append_audit

log = logging.getLogger(__name__)

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
        self._queue: deque[AuditEvent] = deque()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one writer at a time: no event written twice
        self.written = 0
        self.dropped = 0

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
        if len(self._queue) >= MAX_BACKLOG:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("! audit backlog full: %d relay events dropped", self.dropped)
            return
        self._queue.append(AuditEvent(kind, outcome, summary, device_id, source, details))

    def pending(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def flush(self) -> None:
        """Write everything queued now (tests, shutdown)."""
        async with self._lock:
            while self._queue:
                batch = list(self._queue)
                await asyncio.to_thread(self._write, batch)
                for _ in batch:
                    self._queue.popleft()
                self.written += len(batch)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush()
        except SQLAlchemyError as exc:
            log.error("! %d audit events not written at shutdown: %s", len(self._queue), exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except SQLAlchemyError as exc:  # keep the events; try again next round
                log.error("! audit write failed (will retry): %s", exc)

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
