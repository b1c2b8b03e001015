"""The on-disk spool: every record stays here until the relay has acknowledged it.

One SQLite file (WAL; a crash of the agent loses nothing committed). The spool gives
each record its sequence number, in the same transaction that stores it together with
the log-file positions it came from, so after a restart nothing is read twice or lost.

Sequence numbers start, when the file is created, at the current time in
microseconds and count up by one: a spool re-created after a disk wipe starts far
above every number the relay holds (the relay deduplicates on (device, seq), so a
reused number would be silently dropped as a duplicate).

Bounds (R32: the agent never fills the device's disk): at most `max_bytes` of record
bodies and `max_age` seconds. Over the size bound the OLDEST ROUTINE records go first
(down to LOW_WATER of the bound, so drops come in rare chunks, not on every append);
urgent records (events of severity urgent) go only if nothing else is left. Every
drop is counted (``dropped_routine``/``dropped_urgent``), reported as the
``agent.dropped_*`` metrics and written to the local audit log.

Thread-safe (one lock): the poller and the sender call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from telemetry.codec import encode_record
from telemetry.records import Record

log = logging.getLogger(__name__)

#: After exceeding the size bound, drop down to this fraction of it.
LOW_WATER = 0.9
#: Rows looked at per step while dropping or acknowledging (bounded statements).
STEP = 500
#: The age bound is checked at most this often (seconds).
AGE_CHECK_INTERVAL = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    urgent INTEGER NOT NULL,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_urgent_seq ON records (urgent, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COUNTERS = ("dropped_routine", "dropped_urgent", "rejected")


@dataclass(frozen=True, slots=True)
class SpoolStats:
    records: int
    bytes: int
    dropped_routine: int
    dropped_urgent: int
    rejected: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """What one append had to drop to stay within bounds (for the audit log)."""

    routine: int
    urgent: int
    reason: str


class Spool:
    """The spool file at `path`. Call `close()` when done."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_age: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', ?)",
            (str(int(clock() * 1_000_000)),),
        )
        for counter in _COUNTERS:
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, '0')", (counter,))
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM records"
        ).fetchone()
        self._count, self._bytes = int(count), int(size)
        self._age_checked = float("-inf")
        self.on_drop: Callable[[Dropped], None] | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ------------------------------------------------------------------------

    def append(
        self, records: Sequence[Record], positions: Mapping[str, str] | None = None
    ) -> list[Record]:
        """Number and store `records` (their `seq` is ignored) and the source
        `positions` they were read up to, atomically. Returns the numbered records."""
        now = self._clock()
        drops: list[Dropped] = []
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                seq = int(self._meta("next_seq"))
                numbered: list[Record] = []
                rows = []
                for record in records:
                    record = dataclasses.replace(record, seq=seq)
                    body = encode_record(record)
                    rows.append((seq, int(record.urgent), now, body))
                    numbered.append(record)
                    self._bytes += len(body)
                    seq += 1
                db.executemany(
                    "INSERT INTO records (seq, urgent, created, body) VALUES (?, ?, ?, ?)", rows
                )
                self._count += len(rows)
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(seq),))
                for source, position in (positions or {}).items():
                    db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (f"pos:{source}", position),
                    )
                drops = self._enforce(now)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._recount()
                raise
        for drop in drops:
            log.warning(
                "! spool %s: dropped %d routine and %d urgent records",
                drop.reason,
                drop.routine,
                drop.urgent,
            )
            if self.on_drop is not None:
                self.on_drop(drop)
        return numbered

    def _enforce(self, now: float) -> list[Dropped]:
        """Drop what exceeds the bounds (inside append's transaction)."""
        drops: list[Dropped] = []
        if now - self._age_checked >= AGE_CHECK_INTERVAL:
            self._age_checked = now
            routine, urgent = self._drop_older(now - self._max_age)
            if routine or urgent:
                drops.append(Dropped(routine, urgent, "age"))
        if self._bytes > self._max_bytes:
            target = int(self._max_bytes * LOW_WATER)
            routine = self._drop_oldest(urgent=False, target=target)
            urgent = self._drop_oldest(urgent=True, target=target) if self._bytes > target else 0
            drops.append(Dropped(routine, urgent, "full"))
        return drops

    def _drop_oldest(self, *, urgent: bool, target: int) -> int:
        dropped = 0
        while self._bytes > target:
            rows = self._db.execute(
                "SELECT seq, LENGTH(body) FROM records WHERE urgent = ? ORDER BY seq LIMIT ?",
                (int(urgent), STEP),
            ).fetchall()
            if not rows:
                break
            cut = []
            for seq, size in rows:
                cut.append(seq)
                self._bytes -= size
                if self._bytes <= target:
                    break
            self._delete(cut)
            dropped += len(cut)
        self._bump("dropped_urgent" if urgent else "dropped_routine", dropped)
        return dropped

    def _drop_older(self, cutoff: float) -> tuple[int, int]:
        rows = self._db.execute(
            "SELECT seq, urgent, LENGTH(body) FROM records WHERE created < ?", (cutoff,)
        ).fetchall()
        self._delete([seq for seq, _, _ in rows])
        self._bytes -= sum(size for _, _, size in rows)
        urgent = sum(1 for _, u, _ in rows if u)
        self._bump("dropped_routine", len(rows) - urgent)
        self._bump("dropped_urgent", urgent)
        return len(rows) - urgent, urgent

    def _delete(self, seqs: Sequence[int]) -> None:
        for start in range(0, len(seqs), STEP):
            chunk = seqs[start : start + STEP]
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"DELETE FROM records WHERE seq IN ({marks})", chunk)  # noqa: S608
        self._count -= len(seqs)

    def _bump(self, counter: str, n: int) -> None:
        if n:
            self._db.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = ?", (n, counter)
            )

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else ""

    def _recount(self) -> None:
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM records"
        ).fetchone()
        self._count, self._bytes = int(count), int(size)

    # -- sending ------------------------------------------------------------------------

    def batch(self, after: int, max_records: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """The next records after seq `after`, in order: at most `max_records`, and at
        most `max_bytes` of bodies (but always at least one)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, max_records),
            ).fetchall()
        out: list[tuple[int, bytes]] = []
        total = 0
        for seq, body in rows:
            total += len(body)
            if out and total > max_bytes:
                break
            out.append((int(seq), bytes(body)))
        return out

    def ack(self, seqs: Iterable[int]) -> None:
        """Forget records the relay has stored (or refused for good)."""
        seqs = list(seqs)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(seqs), STEP):
                    chunk = seqs[start : start + STEP]
                    marks = ",".join("?" * len(chunk))
                    count, size = db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM records "  # noqa: S608
                        f"WHERE seq IN ({marks})",
                        chunk,
                    ).fetchone()
                    db.execute(f"DELETE FROM records WHERE seq IN ({marks})", chunk)  # noqa: S608
                    self._count -= int(count)
                    self._bytes -= int(size)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._recount()
                raise

    def count_rejected(self, n: int) -> None:
        with self._lock:
            self._bump("rejected", n)

    # -- state --------------------------------------------------------------------------

    def position(self, source: str) -> str | None:
        with self._lock:
            return self._meta(f"pos:{source}") or None

    def stats(self) -> SpoolStats:
        with self._lock:
            counters = dict(
                self._db.execute(
                    "SELECT key, value FROM meta WHERE key IN (?, ?, ?)", _COUNTERS
                ).fetchall()
            )
            return SpoolStats(
                self._count,
                self._bytes,
                int(counters.get("dropped_routine", 0)),
                int(counters.get("dropped_urgent", 0)),
                int(counters.get("rejected", 0)),
            )

    def pending_seqs(self) -> list[int]:
        """Every seq still spooled (tests and diagnostics)."""
        with self._lock:
            return [int(r[0]) for r in self._db.execute("SELECT seq FROM records ORDER BY seq")]
