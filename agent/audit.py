"""The device's own audit log (R21): append-only, hash-chained, readable on the device.

One chain for the whole agent: every feature (desktop sessions, telemetry, and the
features to come) appends to the same file, so a reader walks one history and one
``verify`` covers it all.

One JSON object per line in ``<data_dir>/audit.log``::

    {"n": 12, "ts": "2025-11-27T10:00:01.123Z", "kind": "instruction",
     "outcome": "refused", "detail": {"action": "upload_logs", ...},
     "prev": "<hash of line 11>", "hash": "<sha256 of this object without 'hash'>"}

``hash`` is the SHA-256 of the line's canonical JSON (sorted keys, no spaces) without
the ``hash`` field; ``prev`` is the previous line's hash (64 zeros for the first). So
editing, removing or reordering a line breaks the chain at that line, which
``outlink-agent audit verify`` reports. What is recorded: every instruction received
from the relay and its outcome, channels the relay opened, desktop sessions, refused
log uploads, link up/down, spool drops, and urgent device events (at most
``agent.telemetry.poller.URGENT_AUDIT_PER_MINUTE`` a minute).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.control import InstructionError, Registry

log = logging.getLogger(__name__)

GENESIS = "0" * 64
#: One entry's details are bounded (a hostile instruction must not bloat the log).
MAX_DETAIL = 2048
#: The last line is found by reading this much from the end of the file.
TAIL_READ = 64 * 1024
#: Readable by the device's administrators (group), writable by the agent only.
FILE_MODE = 0o640


def canonical(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


class AuditLog:
    """Appends to the chain in `path`; every append is fsync'ed.

    Each append takes an exclusive ``flock`` on the file and continues the chain from
    its last line, so several writers -- two features of the agent, the agent and an
    ``outlink-agent`` command in another process -- keep one intact chain.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, kind: str, outcome: str = "ok", **detail: Any) -> dict[str, Any]:
        text = json.dumps(detail, sort_keys=True, default=str)
        if len(text) > MAX_DETAIL:
            detail = {"truncated": text[:MAX_DETAIL]}
        detail = json.loads(json.dumps(detail, default=str))
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
                n, prev, complete = _tail(fd)
                entry: dict[str, Any] = {
                    "n": n + 1,
                    "ts": datetime.now(UTC)
                    .isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
                    "kind": kind,
                    "outcome": outcome,
                    "detail": detail,
                    "prev": prev,
                }
                entry["hash"] = entry_hash(entry)
                # A line cut by a crash stays (verify reports it); ours starts afresh.
                line = ("" if complete else "\n") + canonical(entry) + "\n"
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry

    def wrap_actions(self, registry: Registry) -> None:
        """Record every instruction the registry serves, with its outcome. Call once,
        after every feature registered its actions and channel kinds."""
        for name, handler in list(registry.actions.items()):
            registry.actions[name] = functools.partial(_audited_action, self, name, handler)
        for kind, channel_handler in list(registry.channels.items()):
            registry.channels[kind] = functools.partial(
                _audited_channel, self, kind, channel_handler
            )
        registry.on_unknown = self._unknown

    def _unknown(self, what: str, name: str) -> None:
        key = "action" if what == "instruction" else "channel"
        self.append(what, "refused", error="unknown", **{key: name})


async def _audited_action(
    audit: AuditLog, name: str, handler: Any, instruction: dict[str, Any]
) -> dict[str, Any] | None:
    args = {k: v for k, v in instruction.items() if k != "action"}
    try:
        result: dict[str, Any] | None = await handler(instruction)
    except InstructionError as exc:
        audit.append("instruction", "refused", action=name, args=args, error=exc.code)
        raise
    except BaseException as exc:
        audit.append("instruction", "error", action=name, args=args, error=type(exc).__name__)
        raise
    audit.append("instruction", "ok", action=name, args=args, result=result or {})
    return result


async def _audited_channel(audit: AuditLog, kind: str, handler: Any, request: Any) -> None:
    audit.append("channel", "opened", channel=kind, meta=getattr(request, "meta", {}))
    await handler(request)


def _tail(fd: int) -> tuple[int, str, bool]:
    """(n, hash) of the file's last valid line ((0, GENESIS) for a new log), and whether
    the file ends with a newline."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, GENESIS, True
    start = max(0, size - TAIL_READ)
    data = os.pread(fd, size - start, start)
    for raw in reversed(data.splitlines()):
        try:
            entry = json.loads(raw)
            return int(entry["n"]), str(entry["hash"]), data.endswith(b"\n")
        except (ValueError, KeyError, TypeError):
            log.warning("! audit log ends with a damaged line; run outlink-agent audit verify")
            continue
    return 0, GENESIS, data.endswith(b"\n")


def read_entries(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, entry or None if unparseable, raw text) for each line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, 1):
            raw = raw.rstrip("\n")
            try:
                entry = json.loads(raw)
            except ValueError:
                yield number, None, raw
                continue
            yield number, entry if isinstance(entry, dict) else None, raw


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    entries: int
    bad_line: int | None = None
    problem: str | None = None


def verify(path: Path) -> Verdict:
    """Walk the chain; the first broken line and why, or ok."""
    prev, n, count = GENESIS, 0, 0
    for number, entry, _ in read_entries(path):
        if entry is None:
            return Verdict(False, count, number, "not a JSON object")
        if entry.get("prev") != prev:
            return Verdict(
                False,
                count,
                number,
                "does not follow the previous line (removed, inserted or reordered lines)",
            )
        if entry.get("hash") != entry_hash(entry):
            return Verdict(False, count, number, "content changed after it was written")
        if entry.get("n") != n + 1:
            return Verdict(False, count, number, "numbering gap")
        prev, n, count = entry["hash"], entry["n"], count + 1
    return Verdict(True, count)
