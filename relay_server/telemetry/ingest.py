"""Batched, idempotent ingestion: many agents' batches, one transaction per flush.

Channel handlers `submit` a device's validated records and wait for the outcome; a
`DbWriter` takes what is queued (up to MAX_FLUSH records), writes it with
`store.telemetry.ingest` in a worker thread (the sync engine never blocks the loop),
commits, and resolves each waiter with its (new, duplicates). Only then does the
handler acknowledge the batch to the agent, so an acked record is a stored record.
Throughput comes from grouping: while one flush is being written the next one fills
up. A failed flush fails its waiters at once (no retry here: the agents keep the
batches and send them again).

Backpressure: at most MAX_QUEUED records wait; `submit` blocks beyond that, the
channel handler stops reading, the tunnel stops granting credit, and the agents keep
their records spooled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from relay_server.dbwriter import DbWriter, WriterStats
from store.db import make_sessionmaker, session_scope
from store.telemetry.ingest import IngestOutcome, ingest
from telemetry.records import Record

#: Records waiting for the writer: ~2 s of peak load; beyond this agents wait.
MAX_QUEUED = 20_000
#: Records per transaction: big enough to amortise the commit, small enough that the
#: first waiter of a flush is not kept long.
MAX_FLUSH = 5_000


@dataclass
class _Job:
    device_id: str
    records: Sequence[Record]
    future: asyncio.Future[IngestOutcome]


class Ingestor:
    """One per relay. `start()`, `submit()` from channel handlers, `stop()`."""

    def __init__(self, engine: Engine, *, max_queued: int = MAX_QUEUED) -> None:
        self._sessions = make_sessionmaker(engine)
        self._writer: DbWriter[_Job, list[IngestOutcome]] = DbWriter(
            "telemetry-ingest",
            self._write,
            max_batch=MAX_FLUSH,
            max_queued=max_queued,
            weight=lambda job: len(job.records),
            retry=False,
            written=self._written,
            failed=self._failed,
        )

    @property
    def stats(self) -> WriterStats:
        """Flushes (``batches``), records (``items``), failures, time spent writing."""
        return self._writer.stats

    async def submit(self, device_id: str, records: Sequence[Record]) -> IngestOutcome:
        """Store `records` of `device_id`; returns once committed. Raises on DB failure."""
        future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        await self._writer.put(_Job(device_id, records, future))
        return await future

    async def start(self) -> None:
        await self._writer.start()

    async def stop(self) -> None:
        """Write what was submitted (its waiters get their outcome), then stop."""
        await self._writer.stop()

    def _write(self, jobs: list[_Job]) -> list[IngestOutcome]:
        with session_scope(self._sessions) as session:
            return ingest(
                session, [(j.device_id, j.records) for j in jobs], received_at=datetime.now(UTC)
            )

    def _written(self, jobs: list[_Job], outcomes: list[IngestOutcome]) -> None:
        for job, outcome in zip(jobs, outcomes, strict=True):
            if not job.future.done():
                job.future.set_result(outcome)

    def _failed(self, jobs: list[_Job], exc: BaseException) -> None:
        """The database failed: every waiter of the flush gets the failure."""
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)
                job.future.exception()  # retrieved: the handler may be gone
