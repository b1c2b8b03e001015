"""Desktop sessions in the database: the agents' ``desktop.state`` events, the relay's own
session changes, the server-side deadlines, and each device's consent setting.

The agent reports its consent setting on connecting (``desktop.policy``,
`protocol.desktop.PolicyReport`; stored by `store.desktop.record_policy`, the portal
shows it before anyone asks) and every change of a session's state (``desktop.state``,
`protocol.desktop.StateReport`). Malformed reports are counted and dropped.
:meth:`DesktopEvents.record` only queues -- the control channel never waits
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
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from protocol.desktop import PolicyReport, State, StateReport
from protocol.envelope import MessageError
from relay_server.dbwriter import DbWriter
from store import desktop
from store.db import make_sessionmaker, session_scope
from store.desktop import Actor

if TYPE_CHECKING:
    from relay_server.agent_link import AgentLink

log = logging.getLogger(__name__)

MAX_BACKLOG: Final = 1000
"""Queued writes. A device reports a handful per session; a full queue means the
database has been away for a while: further events are dropped and counted."""

SWEEP_INTERVAL: Final = 2.0
"""How often overdue requests are timed out: within the 5 s grace the portal shows."""

Job = Callable[[Session], None]


def apply_state(
    session: Session, device_id: str, event: StateReport, actor: Actor, now: datetime
) -> bool:
    """Record ``device_id``'s ``event``; False when the state table ignores it (late,
    duplicate, or not this device's session)."""
    sid = event.session_id
    if event.state is State.STARTED:
        row = desktop.record_started(
            session, sid, viewer=event.viewer, now=now, actor=actor, device_id=device_id
        )
    elif event.state is State.ENDED:
        row = desktop.record_ended(
            session,
            sid,
            reason=event.end_reason or event.reason or "ended",
            now=now,
            actor=actor,
            device_id=device_id,
            bytes_to_viewer=event.bytes_to_viewer,
            bytes_from_viewer=event.bytes_from_viewer,
        )
    else:
        row = desktop.record_decision(
            session,
            sid,
            event.state,
            by=event.by,
            reason=event.reason,
            now=now,
            actor=actor,
            device_id=device_id,
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
            event = StateReport.parse(fields)
        except MessageError as exc:
            self.invalid += 1
            log.info("! bad desktop.state event dropped: %s", exc.message)
            return
        device_id = link.device_id
        log.info("< desktop.state %s %s by %s", event.session_id, event.state, event.by)

        def job(session: Session) -> None:
            if apply_state(session, device_id, event, self.actor, datetime.now(UTC)):
                self.applied += 1
            else:
                self.ignored += 1
                log.info(
                    "= desktop.state %s %s ignored (late, duplicate or not this device's)",
                    event.session_id,
                    event.state,
                )

        self.submit(job)

    def record_policy(self, link: AgentLink, fields: dict[str, Any]) -> None:
        """`ControlContext.events` handler for ``desktop.policy`` (sent on connecting)."""
        try:
            event = PolicyReport.parse(fields)
        except MessageError as exc:
            self.invalid += 1
            log.info("! bad desktop.policy event dropped: %s", exc.message)
            return
        device_id = link.device_id
        timeout = math.ceil(event.consent_timeout_s)
        log.info(
            "< desktop.policy consent %s, %d s, remote answers %s",
            "required" if event.consent_required else "OFF",
            timeout,
            "allowed" if event.remote_consent_allowed else "not allowed",
        )

        def job(session: Session) -> None:
            desktop.record_policy(
                session,
                device_id,
                consent_required=event.consent_required,
                consent_timeout_s=timeout,
                remote_consent_allowed=event.remote_consent_allowed,
                now=datetime.now(UTC),
                actor=self.actor,
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
