"""Desktop sessions in the database: the agents' ``desktop.state`` events, the relay's own
session changes, the server-side deadlines, and each device's consent setting.

The agent reports its consent setting on connecting (``desktop.policy``,
`protocol.desktop.PolicyReport`; stored by `store.desktop.record_policy`, the portal
shows it before anyone asks) and every change of a session's state (``desktop.state``,
`protocol.desktop.StateReport`). Malformed reports are counted and dropped.
:meth:`DesktopEvents.record` only queues -- the control channel never waits
for the database -- and one writer task applies the queue in order through
`store.desktop`, which moves a session only along its state table, only for the
reporting device's own sessions, and audits each change in the same transaction. The
viewer endpoint queues its own changes here too (``submit``), so one session's writes
never overtake each other. Every SWEEP_INTERVAL the task also runs
`store.desktop.sweep`: a request nobody decided by its deadline becomes ``timeout``
even when its device is gone.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from protocol.desktop import PolicyReport, State, StateReport
from protocol.envelope import MessageError
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

#: Errors that mean "the database is away": keep the queue and retry.
UNREACHABLE: Final = (OperationalError, InterfaceError)


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
            session, sid, reason=event.end_reason or event.reason or "ended", now=now,
            actor=actor, device_id=device_id, bytes_to_viewer=event.bytes_to_viewer,
            bytes_from_viewer=event.bytes_from_viewer,
        )
    else:
        row = desktop.record_decision(
            session, sid, event.state, by=event.by, reason=event.reason, now=now, actor=actor,
            device_id=device_id,
        )
    return row is not None


class DesktopEvents:
    """The relay's writer of desktop-session changes (one task, jobs in order)."""

    def __init__(self, engine: Engine, relay_id: str) -> None:
        self._sessions = make_sessionmaker(engine)
        self.actor = Actor(f"relay:{relay_id}")
        self._queue: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.applied = self.ignored = self.invalid = self.dropped = 0

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
                log.info("= desktop.state %s %s ignored (late, duplicate or not this "
                         "device's)", event.session_id, event.state)

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
        log.info("< desktop.policy consent %s, %d s, remote answers %s",
                 "required" if event.consent_required else "OFF", timeout,
                 "allowed" if event.remote_consent_allowed else "not allowed")

        def job(session: Session) -> None:
            desktop.record_policy(
                session, device_id, consent_required=event.consent_required,
                consent_timeout_s=timeout,
                remote_consent_allowed=event.remote_consent_allowed,
                now=datetime.now(UTC), actor=self.actor,
            )

        self.submit(job)

    def submit(self, job: Job) -> None:
        """Queue one database change (run in order, in its own transaction)."""
        if len(self._queue) >= MAX_BACKLOG:
            self.dropped += 1
            log.error("! desktop session backlog full: %d changes dropped", self.dropped)
            return
        self._queue.append(job)
        self._wake.set()

    # -- the writer ---------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="desktop-sessions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush()
        except SQLAlchemyError as exc:
            log.error("! %d desktop session changes not written at shutdown: %s",
                      len(self._queue), exc)

    async def flush(self) -> None:
        """Apply everything queued now. A database that cannot be reached raises (the
        jobs stay queued); a job that fails otherwise is logged and dropped, so one bad
        row cannot stop the queue."""
        async with self._lock:
            while self._queue:
                job = self._queue[0]
                try:
                    await asyncio.to_thread(self._run_job, job)
                except UNREACHABLE:
                    raise
                except Exception:
                    log.exception("! desktop session change failed; dropped")
                self._queue.popleft()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_sweep - loop.time())):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_INTERVAL
                    await asyncio.to_thread(self._run_job, self._sweep)
            except SQLAlchemyError as exc:  # keep the jobs; try again at the next sweep
                log.error("! desktop session write failed (will retry): %s", exc)
                next_sweep = loop.time() + SWEEP_INTERVAL

    def _run_job(self, job: Job) -> None:
        with session_scope(self._sessions) as session:
            job(session)

    def _sweep(self, session: Session) -> None:
        for row in desktop.sweep(session, datetime.now(UTC), self.actor):
            log.info("= desktop session %s: %s (%s)", row.id, row.state, row.end_reason)
