"""Batched, idempotent ingestion: many agents' batches, one transaction per flush.

Channel handlers `submit` a device's validated records and wait for the outcome;
the worker takes everything queued, writes it with `store.telemetry.ingest` in a
worker thread (the sync engine never blocks the loop), commits, and resolves each
waiter with its (new, duplicates). Only then does the handler acknowledge the batch to
the agent, so an acked record is a stored record. Throughput comes from grouping:
while one flush is being written the next one fills up.

Backpressure: at most MAX_QUEUED records wait; `submit` blocks beyond that, the
channel handler stops reading, the tunnel stops granting credit, and the agents keep
their records spooled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from store.db import make_sessionmaker, session_scope
from store.telemetry.ingest import IngestOutcome, ingest
from telemetry.records import Record

log = logging.getLogger(__name__)

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


@dataclass
class IngestStats:
    flushes: int = 0
    records: int = 0
    duplicates: int = 0
    failures: int = 0
    seconds: float = 0.0


class Ingestor:
    """One per relay. `await run()` in a task; `submit()` from channel handlers."""

    def __init__(self, engine: Engine, *, max_queued: int = MAX_QUEUED) -> None:
        self._sessions = make_sessionmaker(engine)
        self._queue: list[_Job] = []
        self._queued = 0
        self._max_queued = max_queued
        self._wake = asyncio.Event()
        self._room = asyncio.Condition()
        self.stats = IngestStats()

    async def submit(self, device_id: str, records: Sequence[Record]) -> IngestOutcome:
        """Store `records` of `device_id`; returns once committed. Raises on DB failure."""
        async with self._room:
            await self._room.wait_for(lambda: self._queued < self._max_queued)
            future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
            self._queue.append(_Job(device_id, records, future))
            self._queued += len(records)
        self._wake.set()
        return await future

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                jobs: list[_Job] = []
                size = 0
                while self._queue and (not jobs or size + len(self._queue[0].records) <= MAX_FLUSH):
                    job = self._queue.pop(0)
                    jobs.append(job)
                    size += len(job.records)
                await self._flush(jobs, size)

    async def _flush(self, jobs: list[_Job], size: int) -> None:
        started = time.perf_counter()
        try:
            outcomes = await asyncio.to_thread(
                self._write, [(j.device_id, j.records) for j in jobs]
            )
        except Exception as exc:  # the database is down: every waiter gets the failure
            self.stats.failures += 1
            log.error("! telemetry flush of %d records failed: %s", size, type(exc).__name__)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
                    job.future.exception()  # retrieved: the handler may be gone
        else:
            for job, outcome in zip(jobs, outcomes, strict=True):
                if not job.future.done():
                    job.future.set_result(outcome)
            self.stats.flushes += 1
            self.stats.records += size
            self.stats.duplicates += sum(o.duplicates for o in outcomes)
        finally:
            self.stats.seconds += time.perf_counter() - started
            async with self._room:
                self._queued -= size
                self._room.notify_all()

    def _write(self, batches: list[tuple[str, Sequence[Record]]]) -> list[IngestOutcome]:
        with session_scope(self._sessions) as session:
            return ingest(session, batches, received_at=datetime.now(UTC))
