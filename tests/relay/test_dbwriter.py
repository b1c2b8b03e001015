"""`DbWriter`, the relay's one background database writer: order, batches, bounds,
latest-wins keys, retries, give-ups, periodic jobs and a stop that loses nothing.

`write` runs in a worker thread; these tests record what it was given and wait for
events (after-commit callbacks, thread events), never for time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from relay_server import dbwriter
from relay_server.dbwriter import DbWriter
from tests.conftest import UNIT

AWAY = OperationalError("SELECT 1", {}, Exception("database away"))
BAD = IntegrityError("INSERT", {}, Exception("bad row"))


@dataclass
class Sink:
    """A `write` that records batches; `fail` raises the queued errors first."""

    batches: list[list[object]] = field(default_factory=list)
    fail: list[Exception] = field(default_factory=list)

    def __call__(self, batch: Sequence[object]) -> int:
        if self.fail:
            raise self.fail.pop(0)
        self.batches.append(list(batch))
        return len(batch)


class Written:
    """An after-commit callback the test can wait on."""

    def __init__(self) -> None:
        self.results: list[tuple[Sequence[object], object]] = []
        self._event = asyncio.Event()

    def __call__(self, batch: Sequence[object], result: object) -> None:
        self.results.append((batch, result))
        self._event.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5 * UNIT):
            while not predicate():
                self._event.clear()
                await self._event.wait()


async def test_items_are_written_in_order_in_batches_of_at_most_max_batch() -> None:
    sink, written = Sink(), Written()
    writer: DbWriter[int, int] = DbWriter(
        "test", sink, max_batch=5, weight=lambda n: n, written=written
    )
    for n in (1, 2, 3, 4, 5, 1):
        writer.put_nowait(n)
    await writer.start()
    try:
        await written.until(lambda: writer.pending() == 0)
        assert sink.batches == [[1, 2], [3], [4], [5], [1]]  # by weight, one item at least
        writer.put_nowait(7)  # over max_batch alone: a batch of its own, written at once
        await written.until(lambda: writer.pending() == 0)
    finally:
        await writer.stop()
    assert sink.batches[-1] == [7]
    assert [result for _, result in written.results] == [2, 1, 1, 1, 1, 1]
    assert (writer.stats.batches, writer.stats.items) == (6, 23)


async def test_a_full_queue_drops_and_counts() -> None:
    writer: DbWriter[int, int] = DbWriter("test", Sink(), max_queued=3)  # not started
    assert [writer.put_nowait(n) for n in range(5)] == [True, True, True, False, False]
    assert (writer.pending(), writer.stats.dropped) == (3, 2)


async def test_put_waits_for_room_until_a_write_ends() -> None:
    release = threading.Event()
    sink = Sink()

    def slow(batch: Sequence[object]) -> int:
        release.wait(5 * UNIT)
        return sink(batch)

    written = Written()
    writer: DbWriter[int, int] = DbWriter("test", slow, max_queued=2, written=written)
    await writer.start()
    try:
        await writer.put(1)
        await writer.put(2)  # queued or in flight: both count against max_queued
        third = asyncio.create_task(writer.put(3))
        await asyncio.sleep(0)
        assert not third.done() and writer.pending() == 2
        release.set()
        await asyncio.wait_for(third, 5 * UNIT)
        await written.until(lambda: writer.pending() == 0)
    finally:
        await writer.stop()
    assert [n for batch in sink.batches for n in batch] == [1, 2, 3]


async def test_a_key_keeps_the_latest_state_in_its_first_place() -> None:
    sink = Sink()
    writer: DbWriter[tuple[str, int], int] = DbWriter(
        "test", sink, key=lambda item: item[0], merge=lambda old, new: (old[0], old[1] + new[1])
    )
    for item in (("a", 1), ("b", 10), ("a", 2), ("c", 100), ("b", 20)):
        writer.put_nowait(item)
    assert writer.pending() == 3
    await writer.flush()
    assert sink.batches == [[("a", 3), ("b", 30), ("c", 100)]]


async def test_an_unreachable_database_keeps_the_batch_and_newer_items_merge_into_it() -> None:
    sink = Sink(fail=[AWAY])
    writer: DbWriter[tuple[str, str], int] = DbWriter("test", sink, key=lambda item: item[0])
    writer.put_nowait(("a", "connected"))
    writer.put_nowait(("b", "connected"))
    with pytest.raises(OperationalError):
        await writer.flush()
    writer.put_nowait(("c", "connected"))
    writer.put_nowait(("a", "disconnected"))  # newer than the batch that failed
    await writer.flush()
    assert sink.batches == [[("a", "disconnected"), ("b", "connected"), ("c", "connected")]]
    assert writer.stats.failed == 0


async def test_the_task_retries_an_unreachable_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbwriter, "RETRY_MIN", 0.01 * UNIT)
    sink, written = Sink(fail=[AWAY, AWAY]), Written()
    writer: DbWriter[int, int] = DbWriter("test", sink, written=written)
    await writer.start()
    try:
        writer.put_nowait(1)
        writer.put_nowait(2)
        await written.until(lambda: bool(written.results))
    finally:
        await writer.stop()
    assert sink.batches == [[1, 2]]
    assert (writer.stats.retries, writer.stats.failed) == (2, 0)


async def test_a_bad_batch_is_given_up_alone_and_reported() -> None:
    failures: list[tuple[list[int], BaseException]] = []
    sink = Sink(fail=[BAD])
    writer: DbWriter[int, int] = DbWriter(
        "test", sink, max_batch=1, failed=lambda batch, exc: failures.append((batch, exc))
    )
    for n in (1, 2):
        writer.put_nowait(n)
    await writer.flush()
    assert sink.batches == [[2]]
    assert failures == [([1], BAD)] and writer.stats.failed == 1


async def test_without_retry_even_an_unreachable_database_gives_the_batch_up() -> None:
    failures: list[BaseException] = []
    writer: DbWriter[int, int] = DbWriter(
        "test", Sink(fail=[AWAY]), retry=False, failed=lambda _batch, exc: failures.append(exc)
    )
    writer.put_nowait(1)
    await writer.flush()  # the caller retries itself (telemetry: the agent resends)
    assert failures == [AWAY] and writer.pending() == 0


async def test_stop_lets_the_write_in_flight_finish_then_writes_what_is_queued() -> None:
    entered, release = threading.Event(), threading.Event()
    sink = Sink()

    def slow(batch: Sequence[object]) -> int:
        entered.set()
        release.wait(5 * UNIT)
        return sink(batch)

    writer: DbWriter[int, int] = DbWriter("test", slow, max_batch=1)
    await writer.start()
    writer.put_nowait(1)
    await asyncio.to_thread(entered.wait, 5 * UNIT)
    writer.put_nowait(2)
    stopping = asyncio.create_task(writer.stop())
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(stopping, 5 * UNIT)
    assert sink.batches == [[1], [2]]  # each once, in order


async def test_with_an_interval_items_wait_for_it_and_stop_drains_them() -> None:
    sink = Sink()
    writer: DbWriter[int, int] = DbWriter("test", sink, interval=3600)
    await writer.start()
    writer.put_nowait(1)
    await asyncio.sleep(0)
    assert sink.batches == [] and writer.pending() == 1
    await writer.stop()
    assert sink.batches == [[1]]


async def test_periodic_jobs_run_from_the_writers_task() -> None:
    ran = threading.Event()
    writer: DbWriter[int, int] = DbWriter("test", Sink())
    writer.every(3600, ran.set, first=0)
    await writer.start()
    try:
        assert await asyncio.to_thread(ran.wait, 5 * UNIT)
    finally:
        await writer.stop()
