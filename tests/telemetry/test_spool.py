"""The agent's SQLite spool: kept until acked, survives restarts, bounded with a counted
drop policy (oldest routine first, urgent kept)."""

from __future__ import annotations

import json
from pathlib import Path

from agent.telemetry.spool import LOW_WATER, Spool
from telemetry.records import Event, Metrics, Severity

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def routine(n: int = 1) -> list[Metrics]:
    return [Metrics(0, T0, {"cpu.percent": float(i)}) for i in range(n)]


def urgent(code: str = "E9001") -> Event:
    return Event(0, T0, code, Severity.URGENT, "app", "tube overtemperature " + "x" * 40)


def open_spool(path: Path, clock: Clock | None = None, max_bytes: int = 10**6) -> Spool:
    return Spool(path / "spool.db", max_bytes=max_bytes, max_age=3600, clock=clock or Clock())


def test_records_are_numbered_kept_until_acked_and_survive_a_restart(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    stored = spool.append(routine(3), {"app": "12:345"})
    seqs = [r.seq for r in stored]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    assert seqs[0] >= int(T0 * 1_000_000)  # starts at the creation time in microseconds
    batch = spool.batch(0, 2, 10**6)
    assert [s for s, _ in batch] == seqs[:2]
    assert json.loads(batch[0][1])["seq"] == seqs[0]
    spool.ack([seqs[0]])
    spool.close()

    again = open_spool(tmp_path)
    assert again.pending_seqs() == seqs[1:]
    assert again.position("app") == "12:345"
    assert again.append(routine(1))[0].seq == seqs[-1] + 1  # never reused
    assert again.stats().records == 3
    again.close()


def test_a_new_spool_starts_above_every_number_an_old_one_used(tmp_path: Path) -> None:
    clock = Clock()
    old = open_spool(tmp_path / "a", clock)
    last = old.append(routine(1000))[-1].seq
    old.close()
    clock.now += 1  # a second later the disk was wiped and the agent started afresh
    new = open_spool(tmp_path / "b", clock)
    assert new.append(routine(1))[0].seq > last
    new.close()


def test_over_the_bound_the_oldest_routine_records_go_and_urgent_ones_stay(
    tmp_path: Path,
) -> None:
    drops = []
    spool = open_spool(tmp_path, max_bytes=64 * 1024)
    spool.on_drop = drops.append
    kept_urgent = spool.append([urgent("E9001")])[0].seq
    first = spool.append(routine(50))
    spool.append([urgent("E9002")])
    for _ in range(40):  # far past the bound
        spool.append(routine(50))
    stats = spool.stats()
    assert stats.bytes <= 64 * 1024
    assert stats.dropped_routine > 0 and stats.dropped_urgent == 0
    pending = spool.pending_seqs()
    assert kept_urgent in pending
    assert first[0].seq not in pending  # the oldest routine went first
    assert len(pending) + stats.dropped_routine == 2 + 41 * 50
    assert drops and all(d.reason == "full" and d.urgent == 0 for d in drops)
    # Dropping goes down to the low-water mark: rare chunks, not a drop per append.
    assert len(drops) < 41 / 2
    assert all(d.routine >= 50 for d in drops[1:])
    assert 0 < LOW_WATER < 1
    spool.close()


def test_only_urgent_records_left_are_dropped_too_and_counted(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_bytes=64 * 1024)
    for _ in range(1000):
        spool.append([urgent()])
    stats = spool.stats()
    assert stats.bytes <= 64 * 1024 and stats.dropped_urgent > 0
    spool.close()


def test_records_older_than_the_age_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    clock = Clock()
    spool = open_spool(tmp_path, clock)
    spool.append([*routine(5), urgent()])
    clock.now += 3601
    spool.append(routine(1))
    stats = spool.stats()
    assert (stats.records, stats.dropped_routine, stats.dropped_urgent) == (1, 5, 1)
    spool.close()


def test_batches_respect_the_byte_limit_but_always_carry_one(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append(routine(10))
    assert len(spool.batch(0, 100, 1)) == 1
    one = len(spool.batch(0, 1, 10**6)[0][1])
    assert len(spool.batch(0, 100, one * 3)) == 3
    spool.count_rejected(2)
    assert spool.stats().rejected == 2
    spool.close()
