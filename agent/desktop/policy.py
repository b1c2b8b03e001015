"""Consent policy and the desktop sessions' state machine (sans-I/O).

:class:`DesktopPolicy` is the device's own setting (agent config ``[desktop]``; R31):
nothing a relay or portal sends changes it. :class:`SessionBook` holds the sessions
and decides every transition::

    request --consent on--> prompting --accept--> accepted --join--> started --> ended
       |                        |--deny-----> denied
       |                        |--deadline-> timeout
       '--consent off---------------------> accepted (by "policy:no-consent")
    prompting / accepted / started --end, deadline--> ended

It never reads a clock: every method takes ``now`` (``time.monotonic()`` seconds) and
:meth:`SessionBook.next_deadline` says when :meth:`SessionBook.tick` must run next
(consent timeout, join window, maximum length, idle timeout). Every change of state
returns a `protocol.desktop.StateReport`, which the service reports to the relay as a
``desktop.state`` event and writes to the local audit log. What the book refuses it
refuses with :class:`Refusal` (a stable code and a message safe to send).

The rules it enforces (the service cannot skip them: there is no other way to a
started session): a viewer joins only an *accepted* session, within
`protocol.desktop.JOIN_WINDOW` of the acceptance, in a mode no stronger than the accepted one,
and only once; remote answers only where the policy allows them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from protocol.desktop import (
    BY_DEVICE,
    BY_POLICY,
    BY_SITE_CONTACT,
    ERR_CONFLICT,
    ERR_FORBIDDEN,
    ERR_NOT_FOUND,
    JOIN_WINDOW,
    EndReason,
    Mode,
    Requester,
    SessionId,
    State,
    StateReport,
    seconds_field,
)
from protocol.envelope import ERR_BUSY

MAX_LIVE_SESSIONS: Final = 1
"""Prompting, accepted or started sessions at once. One screen, one prompt, one pair of
hands on the device's keyboard: a second request waits until the first is over."""

MAX_FINISHED: Final = 32
"""Finished sessions remembered, so a late answer or end gets "conflict", not "not_found"."""

LIVE: Final = frozenset({State.PROMPTING, State.ACCEPTED, State.STARTED})
"""States in which a session holds the slot (and the service shows a window)."""


class Refusal(Exception):
    """The book will not do it. ``code`` is stable; ``message`` is safe to send."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class DesktopPolicy:
    """The device's consent policy (see agent config ``[desktop]``). Durations in s."""

    consent_required: bool = True
    consent_timeout_s: float = 30.0
    allow_remote_consent: bool = False
    max_session_s: float = 14400.0
    idle_timeout_s: float = 900.0
    display: str = ":0"

    def __post_init__(self) -> None:
        if min(self.consent_timeout_s, self.max_session_s, self.idle_timeout_s) <= 0:
            raise ValueError(f"durations must be positive: {self}")


def resolve_display(configured: str, environ: Mapping[str, str]) -> str:
    """The display to use: the configured one, else ``$DISPLAY``, else ``:0``."""
    return configured or environ.get("DISPLAY") or ":0"


def desktop_enabled(
    enabled: bool | None,
    configured_display: str,
    environ: Mapping[str, str],
    socket_exists: Callable[[str], bool],
) -> tuple[bool, str]:
    """Whether to serve desktop sessions, and why (for the log line). Unset = on when a
    display is configured, named by ``$DISPLAY``, or its X socket exists."""
    if enabled is not None:
        return enabled, "set in the configuration"
    if configured_display:
        return True, f"display {configured_display} is configured"
    if environ.get("DISPLAY"):
        return True, f"DISPLAY={environ['DISPLAY']}"
    if socket_exists(":0"):
        return True, "an X server is running on :0"
    return False, "no display configured, no $DISPLAY, no X server on :0"


@dataclass(slots=True)
class Session:
    """One session's facts. Mutated only by :class:`SessionBook`."""

    id: SessionId
    mode: Mode
    requester: Requester
    reason: str
    requested_at: float
    state: State = State.PROMPTING
    deadline: float | None = None
    decided_by: str = ""
    accepted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: str = ""
    viewer: str = ""
    joined_mode: Mode | None = None
    last_activity: float = 0.0
    bytes_to_viewer: int = 0
    bytes_from_viewer: int = 0
    inputs_dropped: int = 0


class SessionBook:
    """All desktop sessions of this device; see the module docstring."""

    def __init__(self, policy: DesktopPolicy) -> None:
        self.policy = policy
        self._live: dict[str, Session] = {}
        self._finished: deque[Session] = deque(maxlen=MAX_FINISHED)

    # -- queries -------------------------------------------------------------------------

    def get(self, session_id: str) -> Session | None:
        """A live or recently finished session."""
        live = self._live.get(session_id)
        if live is not None:
            return live
        return next((s for s in self._finished if s.id == session_id), None)

    @property
    def live(self) -> list[Session]:
        return list(self._live.values())

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must run next; ``None`` when no live session has one."""
        deadlines = [s.deadline for s in self._live.values() if s.deadline is not None]
        return min(deadlines, default=None)

    # -- transitions -----------------------------------------------------------------------

    def request(
        self, session_id: SessionId, mode: Mode, requester: Requester, reason: str, now: float
    ) -> tuple[Session, list[StateReport]]:
        """A new request: ``prompting`` (no event: the instruction's answer says so), or
        ``accepted`` at once when the policy asks for no consent."""
        if self.get(session_id) is not None:
            raise Refusal(ERR_CONFLICT, "a session with this id exists already")
        if len(self._live) >= MAX_LIVE_SESSIONS:
            raise Refusal(ERR_BUSY, "another desktop session is in progress on this device")
        session = Session(session_id, mode, requester, reason, requested_at=now)
        self._live[session_id] = session
        if self.policy.consent_required:
            session.deadline = now + self.policy.consent_timeout_s
            return session, []
        return session, [self._accept(session, BY_POLICY, now, "consent is off on this device")]

    def answer(
        self, session_id: str, accept: bool, now: float, *, site_contact: str | None = None
    ) -> list[StateReport]:
        """The device's answer, or (``site_contact`` = their user name) a remote one. The
        portal applies the whole four-eyes rule (`store.consent`, it knows roles); the
        device refuses the part it can see, a remote answer named for the requester."""
        if site_contact is not None and not self.policy.allow_remote_consent:
            raise Refusal(ERR_FORBIDDEN, "this device does not accept answers from the portal")
        session = self._find(session_id)
        if site_contact is not None and site_contact == session.requester.user:
            raise Refusal(ERR_FORBIDDEN, "the requester cannot answer their own request")
        if session.state is not State.PROMPTING:
            raise Refusal(ERR_CONFLICT, f"the request is already {session.state}")
        by = BY_DEVICE if site_contact is None else BY_SITE_CONTACT + site_contact
        where = "on the device" if site_contact is None else "by a site contact"
        if accept:
            return [self._accept(session, by, now, f"accepted {where}")]
        return [self._finish(session, State.DENIED, by, now, f"denied {where}")]

    def join(self, session_id: str, mode: Mode, viewer: str, now: float) -> list[StateReport]:
        """A viewer's desktop channel. Raises ``forbidden`` unless the session is accepted,
        the join window is open, ``mode`` is allowed and nobody joined before."""
        session = self._live.get(session_id)
        if session is None or session.state is not State.ACCEPTED:
            raise Refusal(ERR_FORBIDDEN, "no accepted desktop session with this id")
        assert session.accepted_at is not None
        if now >= session.accepted_at + JOIN_WINDOW:
            raise Refusal(ERR_FORBIDDEN, "the session was not joined in time")
        if not session.mode.allows(mode):
            raise Refusal(ERR_FORBIDDEN, f"the session was accepted for {session.mode} only")
        session.state = State.STARTED
        session.started_at = session.last_activity = now
        session.viewer = viewer
        session.joined_mode = mode
        session.deadline = self._stream_deadline(session)
        return [
            StateReport(
                session.id, State.STARTED, session.decided_by, "viewer joined", mode, viewer
            )
        ]

    def sent(self, session_id: str, nbytes: int) -> None:
        """Bytes streamed to the viewer (for the ``ended`` report)."""
        session = self._live.get(session_id)
        if session is not None:
            session.bytes_to_viewer += nbytes

    def received(self, session_id: str, nbytes: int, now: float, *, dropped: int = 0) -> None:
        """A message from the viewer: counts, and it is activity (idle timeout)."""
        session = self._live.get(session_id)
        if session is not None and session.state is State.STARTED:
            session.bytes_from_viewer += nbytes
            session.inputs_dropped += dropped
            session.last_activity = now
            session.deadline = self._stream_deadline(session)

    def end(self, session_id: str, reason: str, now: float) -> list[StateReport]:
        """End a live session (customer, portal, viewer gone, failure). A prompting
        request ends too (withdrawn); a finished one raises ``conflict``."""
        session = self._find(session_id)
        if session.state not in LIVE:
            raise Refusal(ERR_CONFLICT, f"the session is already {session.state}")
        return [self._finish(session, State.ENDED, session.decided_by or BY_DEVICE, now, reason)]

    def tick(self, now: float) -> list[StateReport]:
        """Fire every deadline that has passed."""
        changes: list[StateReport] = []
        for session in list(self._live.values()):
            if session.deadline is None or now < session.deadline:
                continue
            if session.state is State.PROMPTING:
                seconds = seconds_field(self.policy.consent_timeout_s)
                changes.append(
                    self._finish(
                        session, State.TIMEOUT, BY_DEVICE, now, f"no answer within {seconds} s"
                    )
                )
            elif session.state is State.ACCEPTED:
                changes.append(
                    self._finish(
                        session, State.ENDED, session.decided_by, now, EndReason.NOT_JOINED
                    )
                )
            else:
                assert session.started_at is not None
                over = now >= session.started_at + self.policy.max_session_s
                reason = EndReason.MAX_LENGTH if over else EndReason.IDLE_TIMEOUT
                changes.append(self._finish(session, State.ENDED, session.decided_by, now, reason))
        return changes

    # -- internals ---------------------------------------------------------------------------

    def _find(self, session_id: str) -> Session:
        session = self.get(session_id)
        if session is None:
            raise Refusal(ERR_NOT_FOUND, "no desktop session with this id")
        return session

    def _accept(self, session: Session, by: str, now: float, reason: str) -> StateReport:
        session.state = State.ACCEPTED
        session.decided_by = by
        session.accepted_at = now
        session.deadline = now + JOIN_WINDOW
        return StateReport(session.id, State.ACCEPTED, by, reason, session.mode)

    def _stream_deadline(self, session: Session) -> float:
        assert session.started_at is not None
        return min(
            session.started_at + self.policy.max_session_s,
            session.last_activity + self.policy.idle_timeout_s,
        )

    def _finish(
        self, session: Session, state: State, by: str, now: float, reason: str
    ) -> StateReport:
        was = session.state
        session.state = state
        session.deadline = None
        session.ended_at = now
        session.decided_by = session.decided_by or by
        del self._live[session.id]
        self._finished.append(session)
        if state is not State.ENDED:
            return StateReport(session.id, state, by, reason)
        session.end_reason = reason
        started = session.started_at if was is State.STARTED else None
        return StateReport(
            session.id,
            state,
            by,
            reason,
            end_reason=reason,
            duration_s=now - started if started is not None else 0,
            bytes_to_viewer=session.bytes_to_viewer,
            bytes_from_viewer=session.bytes_from_viewer,
            inputs_dropped=session.inputs_dropped,
        )
