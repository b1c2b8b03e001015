"""Desktop sessions in the database: the agents' ``desktop.state`` events, the relay's own
session changes, the server-side deadlines, and each device's consent setting.

On connecting, the agent reports its consent setting (`store.desktop.record_policy`;
the portal shows it before anyone asks)::

    {"id": 2, "op": "event", "name": "desktop.policy", "consent_required": true,
     "consent_timeout_s": 30, "remote_consent_allowed": false}

The agent reports every change of a session's state on its control channel::

    {"id": 9, "op": "event", "name": "desktop.state", "session_id": "...",
     "state": "accepted" | "denied" | "timeout" | "started" | "ended",
     "by": "device" | "site-contact:<user>" | "policy:no-consent", "reason": "...",
     "end_reason"?, "bytes_to_viewer"?, "bytes_from_viewer"?, "viewer"?, ...}

:func:`parse_state` checks the fields (sans-I/O; anything malformed is counted and
dropped). :meth:`DesktopEvents.record` only queues -- the control channel never waits
for the database -- and a `DbWriter` applies the queue in order through
`store.desktop`, which moves a session only along its state table, only for the
reporting device's own sessions, and audits each change in the same transaction. The
viewer endpoint queues its own changes here too (``submit``), so one session's writes
never overtake each other. Every SWEEP_INTERVAL the task also runs
`store.desktop.sweep`: a request nobody decided by its deadline becomes ``timeout``
even when its device is gone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from relay_server.dbwriter import DbWriter
from store import desktop
from store.db import make_sessionmaker, session_scope
from store.desktop import Actor, State

if TYPE_CHECKING:
    from relay_server.agent_link import AgentLink

log = logging.getLogger(__name__)

EVENT_NAME: Final = "desktop.state"
POLICY_EVENT: Final = "desktop.policy"

MAX_BACKLOG: Final = 1000
"""Queued writes. A device reports a handful per session; a full queue means the
database has been away for a while: further events are dropped and counted."""

SWEEP_INTERVAL: Final = 2.0
"""How often overdue requests are timed out: within the 5 s grace the portal shows."""

REPORTABLE: Final = frozenset(
    {State.ACCEPTED, State.DENIED, State.TIMEOUT, State.STARTED, State.ENDED}
)
"""What an agent may report (``prompting`` is its answer to the request itself)."""

MAX_REASON_IN: Final = 2000
"""Longer text is not a reason; stored reasons are clipped to store.desktop's limit."""

MAX_COUNT: Final = 2**53 - 1

Job = Callable[[Session], None]


@dataclass(frozen=True, slots=True)
class StateEvent:
    """One valid ``desktop.state`` report of one device."""

    device_id: str
    session_id: str
    state: State
    by: str
    reason: str
    viewer: str = ""
    bytes_to_viewer: int = 0
    bytes_from_viewer: int = 0


def _text(fields: dict[str, Any], key: str, limit: int, *, required: bool) -> str:
    value = fields.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{key} must be a string of <= {limit} characters")
    return value


def _count(fields: dict[str, Any], key: str) -> int:
    value = fields.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{key} must be a non-negative integer")
    return value


def parse_state(device_id: str, fields: dict[str, Any]) -> StateEvent:
    """Check one event's fields. Raises ValueError (a local diagnostic, never sent)."""
    session_id = desktop.parse_session_id(fields.get("session_id"))
    if session_id is None:
        raise ValueError("session_id must be a UUID")
    try:
        state = State(str(fields.get("state")))
    except ValueError:
        raise ValueError("unknown state") from None
    if state not in REPORTABLE:
        raise ValueError(f"an agent does not report {state}")
    reason = _text(fields, "reason", MAX_REASON_IN, required=False)
    if state is State.ENDED:
        reason = _text(fields, "end_reason", MAX_REASON_IN, required=False) or reason
    return StateEvent(
        device_id,
        session_id,
        state,
        by=_text(fields, "by", desktop.MAX_BY, required=True),
        reason=reason[: desktop.MAX_END_REASON],
        viewer=_text(fields, "viewer", MAX_REASON_IN, required=False)[:64],
        bytes_to_viewer=_count(fields, "bytes_to_viewer"),
        bytes_from_viewer=_count(fields, "bytes_from_viewer"),
    )


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    """One valid ``desktop.policy`` report: the device's consent setting."""

    device_id: str
    consent_required: bool
    consent_timeout_s: int
    remote_consent_allowed: bool


def parse_policy(device_id: str, fields: dict[str, Any]) -> PolicyEvent:
    """Check a ``desktop.policy`` event. Raises ValueError (a local diagnostic)."""
    flags = [fields.get(k) for k in ("consent_required", "remote_consent_allowed")]
    if not all(isinstance(f, bool) for f in flags):
        raise ValueError("consent_required and remote_consent_allowed must be booleans")
    timeout = fields.get("consent_timeout_s")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            0 < timeout <= desktop.CONSENT_TIMEOUT_MAX):
        raise ValueError(f"consent_timeout_s must be in (0, {desktop.CONSENT_TIMEOUT_MAX}]")
    return PolicyEvent(device_id, bool(flags[0]), math.ceil(timeout), bool(flags[1]))


def apply_state(session: Session, event: StateEvent, actor: Actor, now: datetime) -> bool:
    """Record ``event``; False when the state table ignores it (late or duplicate)."""
    sid, dev = event.session_id, event.device_id
    if event.state is State.STARTED:
        row = desktop.record_started(
            session, sid, viewer=event.viewer, now=now, actor=actor, device_id=dev
        )
    elif event.state is State.ENDED:
        row = desktop.record_ended(
            session, sid, reason=event.reason or "ended", now=now, actor=actor, device_id=dev,
            bytes_to_viewer=event.bytes_to_viewer, bytes_from_viewer=event.bytes_from_viewer,
        )
    else:
        row = desktop.record_decision(
            session, sid, event.state, by=event.by, reason=event.reason, now=now, actor=actor,
            device_id=dev,
        )
    return row is not None


class DesktopEvents:
    """The relay's writer of desktop-session changes (one task, jobs in order)."""

    def __init__(self, engine: Engine, relay_id: str) -> None:
        self._sessions = make_sessionmaker(engine)
        self.actor = Actor(f"relay:{relay_id}")
        # One job per transaction: a job that fails for its own reasons is dropped alone.
        self._writer: DbWriter[Job, None] = DbWriter(
            "desktop-sessions", self._run_jobs, max_batch=1, max_queued=MAX_BACKLOG
        )
        self._writer.every(SWEEP_INTERVAL, self._sweep, first=0)
        self.applied = self.ignored = self.invalid = 0

    @property
    def dropped(self) -> int:
        """Changes refused because the backlog was full."""
        return self._writer.stats.dropped

    # -- producers (event loop; never block) --------------------------------------------

    def record(self, link: AgentLink, fields: dict[str, Any]) -> None:
        """`ControlContext.events` handler for ``desktop.state``."""
        try:
            event = parse_state(link.device_id, fields)
        except ValueError as exc:
            self.invalid += 1
            log.info("! bad desktop.state event dropped: %s", exc)
            return
        log.info("< desktop.state %s %s by %s", event.session_id, event.state, event.by)

        def job(session: Session) -> None:
            if apply_state(session, event, self.actor, datetime.now(UTC)):
                self.applied += 1
            else:
                self.ignored += 1
                log.info("= desktop.state %s %s ignored (late, duplicate or not this "
                         "device's)", event.session_id, event.state)

        self.submit(job)

    def record_policy(self, link: AgentLink, fields: dict[str, Any]) -> None:
        """`ControlContext.events` handler for ``desktop.policy`` (sent on connecting)."""
        try:
            event = parse_policy(link.device_id, fields)
        except ValueError as exc:
            self.invalid += 1
            log.info("! bad desktop.policy event dropped: %s", exc)
            return
        log.info("< desktop.policy consent %s, %d s, remote answers %s",
                 "required" if event.consent_required else "OFF", event.consent_timeout_s,
                 "allowed" if event.remote_consent_allowed else "not allowed")

        def job(session: Session) -> None:
            desktop.record_policy(
                session, event.device_id, consent_required=event.consent_required,
                consent_timeout_s=event.consent_timeout_s,
                remote_consent_allowed=event.remote_consent_allowed,
                now=datetime.now(UTC), actor=self.actor,
            )

        self.submit(job)

    def submit(self, job: Job) -> None:
        """Queue one database change (run in order, in its own transaction)."""
        self._writer.put_nowait(job)

    # -- the writer ---------------------------------------------------------------------

    async def start(self) -> None:
        await self._writer.start()

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        await self._writer.stop()

    async def flush(self) -> None:
        """Apply everything queued now (tests). A database that cannot be reached raises
        (the jobs stay queued); a job that fails otherwise is logged and dropped, so one
        bad row cannot stop the queue."""
        await self._writer.flush()

    def _run_jobs(self, jobs: list[Job]) -> None:
        with session_scope(self._sessions) as session:
            for job in jobs:
                job(session)

    def _sweep(self) -> None:
        """Time out the requests nobody decided by their deadline."""
        with session_scope(self._sessions) as session:
            for row in desktop.sweep(session, datetime.now(UTC), self.actor):
                log.info("= desktop session %s: %s (%s)", row.id, row.state, row.end_reason)
