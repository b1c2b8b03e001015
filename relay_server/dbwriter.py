"""`DbWriter`: the one way the relay writes to the database in the background.

Producers on the event loop queue items and never wait for the database (`put_nowait`),
or wait only for room in the queue (`put`: backpressure). One task takes batches off
the queue in order and runs ``write(batch)`` in a worker thread -- one transaction per
batch, one batch at a time -- so the event loop never blocks on the database and no
write overtakes an earlier one. Presence, the audit trail, telemetry ingestion, alarms
and desktop session changes each own one.

* **When**: ``interval=0`` writes as soon as something is queued (what arrives while a
  batch is being written makes the next batch); ``interval > 0`` writes what is queued
  every ``interval`` seconds.
* **How much**: a batch is at most ``max_batch`` of weight (``weight(item)``, e.g. a
  job's record count; at least one item), all that is queued when None.
* **Bounded**: at most ``max_queued`` of weight waits, the batch being written included;
  beyond that `put_nowait` drops the item (counted, logged) and `put` waits.
* **Latest wins**: with ``key``, an item queued for a key already queued is merged into
  it (``merge(queued, new)``), keeping its place: presence writes each device's latest
  state, however often it changed.
* **Errors**: a database that cannot be reached (`UNREACHABLE`) keeps the batch at the
  head of the queue and is retried after RETRY_MIN, doubling up to RETRY_MAX. Any other
  error -- or any error at all with ``retry=False``, where the caller retries itself
  (telemetry: the agent resends) -- gives the batch up: counted, logged, and reported to
  ``failed(batch, error)``, so one bad row cannot stop the queue.
* **After the commit**: ``written(batch, result)`` runs on the event loop (telemetry acks
  its agents there, alarms act).
* **Periodic jobs** (`every`) run from the same task between batches (presence's
  ``last_seen`` and heartbeat, the desktop request sweep).
* **Stop** lets the current write finish, then writes everything still queued: nothing
  accepted is lost unless the database is unreachable at shutdown (logged with a count).
* **Metrics**: `pending()` and `stats` are read at scrape time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Errors that mean "the database is away": keep the batch and try again later.
UNREACHABLE: Final = (OperationalError, InterfaceError)

RETRY_MIN: Final = 1.0
"""First retry after the database could not be reached (seconds)..."""
RETRY_MAX: Final = 30.0
"""...doubling up to this: a relay whose database is gone does not hammer it."""


@dataclass
class WriterStats:
    """Counters of one writer (read at scrape time)."""

    batches: int = 0  # batches committed
    items: int = 0  # weight committed
    dropped: int = 0  # items refused because the queue was full
    failed: int = 0  # batches given up
    retries: int = 0  # writes that found the database unreachable
    seconds: float = 0.0  # time spent in `write`, successful or not


@dataclass(eq=False)
class _Periodic:
    interval: float
    job: Callable[[], object]
    first: float  # seconds after start
    due: float = 0.0


class DbWriter(Generic[T, R]):
    """A queue of items on the event loop, written in batches by one task (see module)."""

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], R],
        *,
        interval: float = 0.0,
        max_batch: int | None = None,
        max_queued: int | None = None,
        weight: Callable[[T], int] | None = None,
        key: Callable[[T], Hashable] | None = None,
        merge: Callable[[T, T], T] | None = None,
        retry: bool = True,
        written: Callable[[list[T], R], None] | None = None,
        failed: Callable[[list[T], BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self._interval = interval
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._weight = weight or (lambda _item: 1)
        self._key = key
        self._merge = merge or (lambda _queued, new: new)
        self._retry = retry
        self._written = written
        self._failed = failed
        self._fifo: deque[T] = deque()
        self._keyed: OrderedDict[Hashable, T] = OrderedDict()
        self._queued = 0  # weight in the queue
        self._in_flight = 0  # weight of the batch being written
        self._periodic: list[_Periodic] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # set when a write ended: `put` looks again
        self._lock = asyncio.Lock()  # one write at a time: the task's, or a flush()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self.stats = WriterStats()

    # -- producers (event loop) ---------------------------------------------------------

    def pending(self) -> int:
        """Weight queued or being written."""
        return self._queued + self._in_flight

    def put_nowait(self, item: T) -> bool:
        """Queue `item`; False (dropped, counted) when the queue is full. Never blocks."""
        if self._max_queued is not None and self.pending() >= self._max_queued:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.error("! %s backlog full: %d dropped", self.name, self.stats.dropped)
            return False
        self._enqueue(item)
        return True

    async def put(self, item: T) -> None:
        """Queue `item`, first waiting while the queue is full (backpressure)."""
        while self._max_queued is not None and self.pending() >= self._max_queued:
            self._room.clear()
            await self._room.wait()
        self._enqueue(item)

    def every(
        self, interval: float, job: Callable[[], object], *, first: float | None = None
    ) -> None:
        """Run `job` in the worker thread every `interval` seconds, the first time
        `first` seconds after `start` (default: one interval). Call before `start`."""
        self._periodic.append(_Periodic(interval, job, interval if first is None else first))

    def _enqueue(self, item: T) -> None:
        weight = self._weight(item)
        if self._key is None:
            self._fifo.append(item)
        else:
            key = self._key(item)
            queued = self._keyed.get(key)
            if queued is not None:
                self._queued -= self._weight(queued)
                item = self._merge(queued, item)
                weight = self._weight(item)
            self._keyed[key] = item
        self._queued += weight
        if not self._interval:
            self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Let the current write finish, stop the task, then write what is queued."""
        if self._task is not None:
            self._closing = True
            self._wake.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush()
        except UNREACHABLE as exc:
            log.error("! %s: %d queued not written at shutdown: %s", self.name, self.pending(), exc)

    async def flush(self) -> None:
        """Write everything queued now, batch by batch. Raises an `UNREACHABLE` error
        when the database cannot be reached (the batch stays queued, unless
        ``retry=False``); other failures give their batch up and go on."""
        async with self._lock:
            while self._fifo or self._keyed:
                batch = self._take()
                started = time.perf_counter()
                try:
                    result = await asyncio.to_thread(self._write, batch)
                except Exception as exc:
                    self._done_writing(started)
                    if self._retry and isinstance(exc, UNREACHABLE):
                        self._restore(batch)
                        raise
                    self._give_up(batch, exc)
                    continue
                except BaseException:  # cancelled: the batch stays queued
                    self._done_writing(started)
                    self._restore(batch)
                    raise
                self._done_writing(started)
                self.stats.batches += 1
                self.stats.items += sum(map(self._weight, batch))
                if self._written is not None:
                    try:
                        self._written(batch, result)
                    except Exception:
                        log.exception("! %s: after-commit handler failed", self.name)

    # -- the task -----------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        begun = loop.time()
        next_write = begun + self._interval
        for periodic in self._periodic:
            periodic.due = begun + periodic.first
        while not self._closing:
            self._wake.clear()
            wake_at = [p.due for p in self._periodic]
            if self._interval:
                wake_at.append(next_write)
            elif self._fifo or self._keyed:
                wake_at.append(self._retry_at)
            delay = min(wake_at) - loop.time() if wake_at else None
            if delay is None or delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                if self._closing:
                    return
            now = loop.time()
            due = now >= self._retry_at
            if self._interval:
                due = due and now >= next_write
                if now >= next_write:
                    next_write = now + self._interval
            if due and (self._fifo or self._keyed):
                await self._write_queued(loop)
            for periodic in self._periodic:
                if now >= periodic.due:
                    periodic.due = now + periodic.interval
                    await self._run_periodic(periodic)

    async def _write_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await self.flush()
        except UNREACHABLE as exc:
            self.stats.retries += 1
            self._retry_delay = min(RETRY_MAX, self._retry_delay * 2 or RETRY_MIN)
            self._retry_at = loop.time() + self._retry_delay
            log.error(
                "! %s: database unreachable, %d queued, next try in %.0f s: %s",
                self.name,
                self.pending(),
                self._retry_delay,
                exc,
            )
        else:
            self._retry_delay = 0.0

    async def _run_periodic(self, periodic: _Periodic) -> None:
        try:
            await asyncio.to_thread(periodic.job)
        except UNREACHABLE as exc:
            log.error(
                "! %s: database unreachable (next try in %.0f s): %s",
                self.name,
                periodic.interval,
                exc,
            )
        except Exception:
            log.exception("! %s: periodic job failed", self.name)

    # -- the queue ------------------------------------------------------------------------

    def _take(self) -> list[T]:
        """The next batch off the queue (moved to in-flight)."""
        batch: list[T] = []
        size = 0
        limit = self._max_batch
        if self._key is None:
            while self._fifo and (
                limit is None or not batch or size + self._weight(self._fifo[0]) <= limit
            ):
                item = self._fifo.popleft()
                batch.append(item)
                size += self._weight(item)
        else:
            while self._keyed and (limit is None or len(batch) < limit):
                batch.append(self._keyed.popitem(last=False)[1])
                size += self._weight(batch[-1])
        self._queued -= size
        self._in_flight = size
        return batch

    def _restore(self, batch: list[T]) -> None:
        """Put a batch that was not written back at the head of the queue; items queued
        meanwhile under the same key are merged into it (the newer state wins)."""
        if self._key is None:
            self._fifo.extendleft(reversed(batch))
            self._queued += sum(map(self._weight, batch))
            return
        newer, self._keyed = self._keyed, OrderedDict((self._key(i), i) for i in batch)
        self._queued = sum(map(self._weight, batch))
        for item in newer.values():
            self._enqueue(item)

    def _done_writing(self, started: float) -> None:
        self.stats.seconds += time.perf_counter() - started
        self._in_flight = 0
        self._room.set()

    def _give_up(self, batch: list[T], exc: Exception) -> None:
        self.stats.failed += 1
        if isinstance(exc, UNREACHABLE):
            log.error("! %s: %d not written, database unreachable: %s", self.name, len(batch), exc)
        else:
            log.error("! %s: %d not written", self.name, len(batch), exc_info=exc)
        if self._failed is not None:
            try:
                self._failed(batch, exc)
            except Exception:
                log.exception("! %s: failure handler failed", self.name)
