"""What the agent is doing, on disk for `outlink-agent status`: status.json and alarms.json.

The running agent is the only writer; `status` (another process, maybe another
user) only reads. Both files are replaced atomically, so a reader never sees
half a file. Alarms survive a restart: a certificate problem that needs a human
stays visible until the next successful connection clears it.

Nothing secret goes here: failure details come from `agent.errors` (built from
known fields) and proxy URLs are redacted by the caller.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import Failure
from pki.keys import write_file_atomic

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"
ALARMS_FILE = "alarms.json"
# Distinct (code, relay) alarms kept; more would only repeat the same story.
MAX_ALARMS = 32


@dataclass
class Alarm:
    """A needs-a-human failure, counted while it repeats."""

    code: str
    relay: str
    detail: str
    since: str
    last: str
    count: int = 1


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class StatusBook:
    """In-memory status and alarms; every change is written through to `data_dir`."""

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.data_dir = Path(data_dir)
        self._clock = clock
        self.state: dict[str, Any] = {
            "state": "starting",
            "connected": False,
            "relay": None,
            "proxy": None,
            "since": None,
            "last_error": None,
            "next_attempt_at": None,
            "device_id": None,
            "pid": os.getpid(),
        }
        self.alarms: dict[tuple[str, str], Alarm] = {}
        for raw in read_json(self.data_dir / ALARMS_FILE, []):
            try:
                alarm = Alarm(**raw)
            except TypeError:
                continue  # a file from another version: drop the entry, keep going
            self.alarms[(alarm.code, alarm.relay)] = alarm

    def update(self, **fields: Any) -> None:
        self.state.update(fields, updated=_iso(self._clock()))
        self._write(STATUS_FILE, self.state)

    def connecting(self, relay: str, proxy: str) -> None:
        self.update(state="connecting", connected=False, relay=relay, proxy=proxy, since=None)

    def connected(self, relay: str, proxy: str, device_id: str) -> None:
        self.update(
            state="connected",
            connected=True,
            relay=relay,
            proxy=proxy,
            device_id=device_id,
            since=_iso(self._clock()),
            next_attempt_at=None,
        )
        self.clear_alarms()

    def failed(self, relay: str, failure: Failure) -> None:
        error = {"code": failure.code, "detail": failure.detail, "relay": relay}
        self.update(connected=False, last_error={**error, "at": _iso(self._clock())})
        if failure.needs_human:
            self._alarm(relay, failure)

    def waiting(self, delay: float) -> None:
        self.update(state="waiting", connected=False, next_attempt_at=_iso(self._clock() + delay))

    def stopped(self) -> None:
        self.update(state="stopped", connected=False, next_attempt_at=None)

    def clear_alarms(self) -> None:
        if self.alarms:
            logger.info("= alarms cleared: %s", ", ".join(a.code for a in self.alarms.values()))
            self.alarms.clear()
            self._write(ALARMS_FILE, [])

    def _alarm(self, relay: str, failure: Failure) -> None:
        now = _iso(self._clock())
        key = (failure.code, relay)
        alarm = self.alarms.get(key)
        if alarm is None:
            if len(self.alarms) >= MAX_ALARMS:
                self.alarms.pop(next(iter(self.alarms)))
            alarm = self.alarms[key] = Alarm(failure.code, relay, failure.detail, now, now)
        else:
            alarm.count += 1
            alarm.last = now
            alarm.detail = failure.detail
        # CRITICAL and structured: this is the line a monitoring system pages on.
        logger.critical(
            "! ALARM %s relay=%s: %s (needs a human; retrying at the backoff cap)",
            failure.code,
            relay,
            failure.detail,
            extra={"alarm": failure.code, "relay": relay, "alarm_count": alarm.count},
        )
        self._write(ALARMS_FILE, [asdict(a) for a in self.alarms.values()])

    def _write(self, name: str, obj: Any) -> None:
        try:
            self.data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            write_file_atomic(self.data_dir / name, json.dumps(obj, indent=1).encode() + b"\n")
        except OSError as exc:
            # A full or read-only disk must not stop the agent from keeping its link.
            logger.warning("! cannot write %s: %s", self.data_dir / name, exc)


def read_json(path: Path, default: Any) -> Any:
    """Read one of our JSON files; missing or corrupt means `default`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def read_status(data_dir: Path) -> dict[str, Any]:
    """Status and alarms as `outlink-agent status` shows them."""
    status = read_json(Path(data_dir) / STATUS_FILE, {})
    return {
        **(status if isinstance(status, dict) else {}),
        "alarms": read_json(Path(data_dir) / ALARMS_FILE, []),
    }
