"""Remote desktop sessions and viewer tickets: the tables and every rule about them.

Tables (migration ``0004``):

* ``desktop_sessions`` one row per request (id = the session id the agent sees): who asked,
  for which device and mode, and what became of it (state, who decided, when it started
  and ended, why, bytes each way).
* ``viewer_tickets``   single-use, short-lived credentials for the relay's ``/view``
  endpoint; only the SHA-256 of the secret is stored.

And (migration ``0006``) ``desktop_policies``: each device's consent setting as its
agent reports it on connecting (:func:`record_policy`), so the portal shows it before
anyone asks for a session.

The portal (``web.desktop``) and the relay (``relay_server.desktop.viewer``,
``relay_server.desktop.events``) both call these functions, so a rule is written once:
who may watch (:func:`viewer_rights`), how a ticket is spent (:func:`redeem_ticket`),
which state may follow which (:data:`TRANSITIONS`, applied by :func:`transition` with
one conditional UPDATE so two processes racing on the same row cannot both win), and
that every applied change lands in the audit trail in the same transaction.

The agent enforces consent (R31); these rows only record what happened and gate the
viewer on the server side. The session's vocabulary (modes, states, limits, who decided,
end reasons) is the contract's, `protocol.desktop`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    delete,
    exists,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from protocol.desktop import (
    BY_POLICY,
    CONSENT_TIMEOUT_MAX,
    JOIN_WINDOW,
    MAX_BY,
    MAX_REASON,
    SESSION_ID_LEN,
    EndReason,
    Mode,
    SessionId,
    State,
    new_session_id,
)
from store.models import Base, Device
from store.portal import Permission, RolePermission, User, UserScope, append_audit

# -- limits and timings -------------------------------------------------------------------

TICKET_TTL: Final = timedelta(seconds=60)
"""A ticket must be used within a minute of issue (the page connects at once)."""

TICKET_BYTES: Final = 32
"""256 random bits per ticket secret."""

TICKET_TEXT_LEN: Final = 43
"""``secrets.token_urlsafe(32)``: 43 URL-safe characters; anything else is not a ticket."""

DECISION_GRACE: Final = timedelta(seconds=5)
"""The server waits the consent timeout plus this for the agent's decision, then marks
the request ``timeout`` itself (the agent may be gone, or its event lost)."""

JOIN_DEADLINE: Final = timedelta(seconds=JOIN_WINDOW) + DECISION_GRACE
"""The agent ends an accepted session nobody joined after its JOIN_WINDOW; the server
follows suit this long after the decision, in case that report never comes."""

CONSENT_TIMEOUT_DEFAULT: Final = 30
"""Seconds the portal counts down before the agent said how long it waits (the agent's
default; its answer brings its own)."""

MAX_END_REASON: Final = 200

TICKET_RETENTION: Final = timedelta(days=1)
"""Spent and expired tickets are deleted after this (they prove nothing afterwards)."""

# Permission names (the portal's ``web.authz.Perm`` has the same values; a test keeps them
# in step). The store cannot import the portal.
PERM_VIEW: Final = "desktop.view"
PERM_CONTROL: Final = "desktop.control"
PERM_CLIPBOARD: Final = "desktop.clipboard"

MODE_PERMISSION: Final = {Mode.VIEW: PERM_VIEW, Mode.CONTROL: PERM_CONTROL}


#: ``(from, to)`` pairs that may happen; anything else is ignored when reported (late or
#: duplicate events, a decision after the server's timeout). The final states have no
#: way out.
TRANSITIONS: Final = frozenset(
    {
        (State.REQUESTED, State.PROMPTING),
        (State.REQUESTED, State.ACCEPTED),
        (State.REQUESTED, State.DENIED),
        (State.REQUESTED, State.TIMEOUT),
        (State.REQUESTED, State.FAILED),
        (State.REQUESTED, State.ENDED),
        (State.PROMPTING, State.ACCEPTED),
        (State.PROMPTING, State.DENIED),
        (State.PROMPTING, State.TIMEOUT),
        (State.PROMPTING, State.ENDED),
        (State.ACCEPTED, State.STARTED),
        (State.ACCEPTED, State.ENDED),
        (State.STARTED, State.ENDED),
    }
)

UNDECIDED: Final = frozenset({State.REQUESTED, State.PROMPTING})
JOINABLE: Final = frozenset({State.ACCEPTED, State.STARTED})
FINAL: Final = frozenset({State.DENIED, State.TIMEOUT, State.FAILED, State.ENDED})

#: The audit kind recorded when a session reaches each state.
AUDIT_KIND: Final = {
    State.PROMPTING: "desktop.prompting",
    State.ACCEPTED: "desktop.accepted",
    State.DENIED: "desktop.denied",
    State.TIMEOUT: "desktop.timeout",
    State.FAILED: "desktop.failed",
    State.STARTED: "desktop.started",
    State.ENDED: "desktop.ended",
}

#: The decided_by the server writes itself (the agent's are `protocol.desktop`'s BY_*).
BY_SERVER_TIMEOUT: Final = "server:no-decision"


# -- tables -------------------------------------------------------------------------------


def _one_of(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class DesktopSession(Base):
    """One desktop request and, if it was accepted, the session it became."""

    __tablename__ = "desktop_sessions"
    __table_args__ = (
        CheckConstraint(_one_of("mode", Mode), name="mode"),
        CheckConstraint(_one_of("state", State), name="state"),
        Index("ix_desktop_sessions_device_requested", "device_id", "requested_at"),
        Index("ix_desktop_sessions_state", "state"),
    )

    id: Mapped[SessionId] = mapped_column(String(SESSION_ID_LEN), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    #: Kept as text: the row must still say who asked after the account is gone.
    username: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default=State.REQUESTED)
    requested_at: Mapped[datetime]
    consent_timeout_s: Mapped[int] = mapped_column(Integer)
    #: Undecided after this: the server marks the request ``timeout``.
    decision_deadline: Mapped[datetime]
    #: As the agent reported it (None until it answered).
    consent_required: Mapped[bool | None] = mapped_column(Boolean)
    remote_consent_allowed: Mapped[bool | None] = mapped_column(Boolean)
    decided_by: Mapped[str | None] = mapped_column(String(MAX_BY))
    decided_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(MAX_END_REASON))
    bytes_to_viewer: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_from_viewer: Mapped[int] = mapped_column(BigInteger, default=0)


class DevicePolicy(Base):
    """A device's consent setting, as its agent last reported it (one row per device)."""

    __tablename__ = "desktop_policies"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    consent_required: Mapped[bool] = mapped_column(Boolean)
    consent_timeout_s: Mapped[int] = mapped_column(Integer)
    remote_consent_allowed: Mapped[bool] = mapped_column(Boolean)
    reported_at: Mapped[datetime]


class ViewerTicket(Base):
    """A single-use credential for ``/view``, bound to user, device, session and mode."""

    __tablename__ = "viewer_tickets"
    __table_args__ = (CheckConstraint(_one_of("mode", Mode), name="mode"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    session_id: Mapped[SessionId] = mapped_column(
        ForeignKey("desktop_sessions.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    mode: Mapped[str] = mapped_column(String(8))
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]


# -- who may watch --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ViewerRights:
    """What a user may do in a session right now."""

    mode: Mode
    clipboard: bool


def viewer_rights(
    session: Session, user_id: int, device_id: str, mode: Mode
) -> ViewerRights | None:
    """The one check, for the portal (request, ticket) and the relay (join, every recheck):
    the user exists and is active, their role grants ``mode``'s permission, and the
    device exists, is not revoked and is in their scope. ``None`` when any of it fails.
    Reads the database each time: a disabled user or a removed right counts at once."""
    user = session.execute(
        select(User.role_id, User.is_active, User.all_scope).where(User.id == user_id)
    ).first()
    if user is None or not user.is_active:
        return None
    perms = set(
        session.scalars(
            select(Permission.name)
            .join(RolePermission, RolePermission.permission_id == Permission.id)
            .where(RolePermission.role_id == user.role_id)
        )
    )
    if MODE_PERMISSION[mode] not in perms:
        return None
    device = session.execute(
        select(Device.customer_id, Device.site_id, Device.revoked_at).where(Device.id == device_id)
    ).first()
    if device is None or device.revoked_at is not None:
        return None
    if not user.all_scope:
        reach = exists().where(
            UserScope.user_id == user_id,
            or_(
                UserScope.customer_id == device.customer_id,
                UserScope.site_id == device.site_id,
                UserScope.device_id == device_id,
            ),
        )
        if not session.scalar(select(reach)):
            return None
    return ViewerRights(mode, PERM_CLIPBOARD in perms)


# -- state changes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Actor:
    """Who records a change in the audit trail: a portal user, or ``relay:<id>``."""

    name: str
    user_id: int | None = None
    source: str | None = None


def create_session(
    session: Session,
    *,
    device_id: str,
    user_id: int,
    username: str,
    mode: Mode,
    reason: str,
    consent_timeout_s: int,
    now: datetime,
) -> DesktopSession:
    """A new request in state ``requested`` (the caller audits ``desktop.requested``)."""
    row = DesktopSession(
        id=new_session_id(),
        device_id=device_id,
        user_id=user_id,
        username=username,
        mode=mode,
        reason=reason[:MAX_REASON],
        state=State.REQUESTED,
        requested_at=now,
        consent_timeout_s=consent_timeout_s,
        decision_deadline=now + timedelta(seconds=consent_timeout_s) + DECISION_GRACE,
        bytes_to_viewer=0,
        bytes_from_viewer=0,
    )
    session.add(row)
    session.flush()
    return row


def _apply(
    session: Session,
    session_id: str,
    target: State,
    values: dict[str, Any],
    *,
    actor: Actor,
    device_id: str | None,
    now: datetime,
    summary: str,
    details: Mapping[str, Any],
    outcome: str = "success",
) -> DesktopSession | None:
    """Move ``session_id`` to ``target`` if :data:`TRANSITIONS` allows it from the state
    it is in *now* (one conditional UPDATE: of two racing writers exactly one wins), and
    audit it in the same transaction. ``device_id`` limits the change to that device's
    sessions (an agent reports on its own only). None: not applied (late, duplicate,
    unknown, or another device's)."""
    sources = sorted(str(s) for s, t in TRANSITIONS if t is target)
    stmt = update(DesktopSession).where(
        DesktopSession.id == session_id, DesktopSession.state.in_(sources)
    )
    if device_id is not None:
        stmt = stmt.where(DesktopSession.device_id == device_id)
    result = session.execute(
        stmt.values(state=str(target), **values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    row = session.get(DesktopSession, session_id, populate_existing=True)
    assert row is not None
    append_audit(
        session,
        AUDIT_KIND[target],
        outcome=outcome,
        actor=actor.name,
        user_id=actor.user_id,
        source=actor.source,
        device_id=row.device_id,
        summary=summary,
        now=now,
        details={"session_id": row.id, "mode": row.mode, "engineer": row.username, **details},
    )
    return row


def record_prompting(
    session: Session,
    session_id: str,
    *,
    consent_timeout_s: int,
    remote_consent_allowed: bool,
    now: datetime,
    actor: Actor,
) -> DesktopSession | None:
    """The agent asks the person at the device; the server's deadline follows its timeout."""
    timeout = max(1, min(consent_timeout_s, CONSENT_TIMEOUT_MAX))
    return _apply(
        session,
        session_id,
        State.PROMPTING,
        {
            "consent_required": True,
            "remote_consent_allowed": remote_consent_allowed,
            "consent_timeout_s": timeout,
            "decision_deadline": now + timedelta(seconds=timeout) + DECISION_GRACE,
        },
        actor=actor,
        device_id=None,
        now=now,
        summary=f"device asks for consent ({timeout} s to answer)",
        details={"consent_timeout_s": timeout, "remote_consent_allowed": remote_consent_allowed},
    )


def record_decision(
    session: Session,
    session_id: str,
    state: State,
    *,
    by: str,
    reason: str,
    now: datetime,
    actor: Actor,
    device_id: str | None = None,
) -> DesktopSession | None:
    """``accepted``, ``denied`` or ``timeout``, and who (or what) decided."""
    if state not in (State.ACCEPTED, State.DENIED, State.TIMEOUT):
        raise ValueError(f"{state} is not a decision")
    by, reason = by[:MAX_BY], reason[:MAX_END_REASON]
    values: dict[str, Any] = {"decided_by": by, "decided_at": now}
    if by == BY_POLICY:
        values["consent_required"] = False
    elif by != BY_SERVER_TIMEOUT:
        values["consent_required"] = True
    if state is not State.ACCEPTED:
        values.update(ended_at=now, end_reason=reason)
    words = {State.ACCEPTED: "accepted", State.DENIED: "denied", State.TIMEOUT: "timed out"}
    return _apply(
        session,
        session_id,
        state,
        values,
        actor=actor,
        device_id=device_id,
        now=now,
        outcome="success" if state is State.ACCEPTED else "failure",
        summary=f"desktop request {words[state]} ({by}): {reason}"
        if reason
        else f"desktop request {words[state]} ({by})",
        details={"by": by, "reason": reason, "no_consent": by == BY_POLICY},
    )


def record_failed(
    session: Session, session_id: str, *, reason: str, now: datetime, actor: Actor
) -> DesktopSession | None:
    """The device could not be asked (offline, refused the instruction)."""
    reason = reason[:MAX_END_REASON]
    return _apply(
        session,
        session_id,
        State.FAILED,
        {"ended_at": now, "end_reason": reason},
        actor=actor,
        device_id=None,
        now=now,
        outcome="failure",
        summary=f"desktop request failed: {reason}",
        details={"reason": reason},
    )


def record_started(
    session: Session,
    session_id: str,
    *,
    viewer: str,
    now: datetime,
    actor: Actor,
    device_id: str | None = None,
) -> DesktopSession | None:
    return _apply(
        session,
        session_id,
        State.STARTED,
        {"started_at": now},
        actor=actor,
        device_id=device_id,
        now=now,
        summary=f"desktop session started ({viewer or 'viewer'})",
        details={"viewer": viewer},
    )


def record_ended(
    session: Session,
    session_id: str,
    *,
    reason: str,
    now: datetime,
    actor: Actor,
    device_id: str | None = None,
    bytes_to_viewer: int = 0,
    bytes_from_viewer: int = 0,
) -> DesktopSession | None:
    """The session (or a request not yet decided) is over: why, how long, how much."""
    reason = reason[:MAX_END_REASON]
    row = session.execute(
        select(DesktopSession.started_at).where(DesktopSession.id == session_id)
    ).first()
    duration = (now - row.started_at).total_seconds() if row and row.started_at else 0.0
    return _apply(
        session,
        session_id,
        State.ENDED,
        {
            "ended_at": now,
            "end_reason": reason,
            "bytes_to_viewer": bytes_to_viewer,
            "bytes_from_viewer": bytes_from_viewer,
        },
        actor=actor,
        device_id=device_id,
        now=now,
        summary=f"desktop session ended: {reason} ({duration:.0f} s, "
        f"{bytes_to_viewer} B to viewer, {bytes_from_viewer} B from viewer)",
        details={
            "reason": reason,
            "duration_s": round(duration, 3),
            "bytes_to_viewer": bytes_to_viewer,
            "bytes_from_viewer": bytes_from_viewer,
        },
    )


def expire_if_overdue(
    session: Session, session_id: str, now: datetime, actor: Actor
) -> DesktopSession | None:
    """``timeout`` for a request still undecided after its deadline (the relay's sweep,
    and the portal when it shows the request); None if it is not overdue."""
    overdue = session.scalar(
        select(
            exists().where(
                DesktopSession.id == session_id,
                DesktopSession.state.in_(sorted(UNDECIDED)),
                DesktopSession.decision_deadline < now,
            )
        )
    )
    if not overdue:
        return None
    return record_decision(
        session,
        session_id,
        State.TIMEOUT,
        by=BY_SERVER_TIMEOUT,
        reason="no decision reached the server in time",
        now=now,
        actor=actor,
    )


#: Rows handled per sweep (bounded work per tick; the next tick takes the rest).
SWEEP_BATCH: Final = 100


def sweep(session: Session, now: datetime, actor: Actor) -> list[DesktopSession]:
    """The server's own deadlines: requests without a decision past their deadline become
    ``timeout``; accepted sessions nobody joined become ``ended`` (``not-joined``); spent
    tickets older than :data:`TICKET_RETENTION` go. Returns the sessions changed."""
    changed: list[DesktopSession] = []
    overdue = session.scalars(
        select(DesktopSession.id)
        .where(DesktopSession.state.in_(sorted(UNDECIDED)), DesktopSession.decision_deadline < now)
        .limit(SWEEP_BATCH)
    ).all()
    for session_id in overdue:
        row = expire_if_overdue(session, session_id, now, actor)
        if row is not None:
            changed.append(row)
    unjoined = session.scalars(
        select(DesktopSession.id)
        .where(
            DesktopSession.state == State.ACCEPTED,
            DesktopSession.decided_at < now - JOIN_DEADLINE,
        )
        .limit(SWEEP_BATCH)
    ).all()
    for session_id in unjoined:
        row = record_ended(session, session_id, reason=EndReason.NOT_JOINED, now=now, actor=actor)
        if row is not None:
            changed.append(row)
    session.execute(delete(ViewerTicket).where(ViewerTicket.expires_at < now - TICKET_RETENTION))
    return changed


# -- tickets --------------------------------------------------------------------------------


def _ticket_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _well_formed(secret: object) -> bool:
    return (
        isinstance(secret, str)
        and len(secret) == TICKET_TEXT_LEN
        and secret.isascii()
        and all(c.isalnum() or c in "-_" for c in secret)
    )


def issue_ticket(session: Session, row: DesktopSession, now: datetime) -> str:
    """A ticket for ``row``'s user, device, session and mode; returns the secret (the
    only copy: the database keeps its SHA-256). The caller checked the rights."""
    if row.user_id is None:
        raise ValueError("the session's user is gone")
    secret = secrets.token_urlsafe(TICKET_BYTES)
    session.add(
        ViewerTicket(
            token_hash=_ticket_hash(secret),
            session_id=row.id,
            user_id=row.user_id,
            device_id=row.device_id,
            mode=row.mode,
            issued_at=now,
            expires_at=now + TICKET_TTL,
        )
    )
    session.flush()
    return secret


def redeem_ticket(session: Session, secret: object, now: datetime) -> ViewerTicket | None:
    """Spend a ticket: ONE conditional UPDATE (unused, unexpired, this hash). Unknown,
    altered, replayed and expired tickets all give None, so none can be told apart."""
    if not _well_formed(secret):
        return None
    assert isinstance(secret, str)
    token_hash = _ticket_hash(secret)
    result = session.execute(
        update(ViewerTicket)
        .where(
            ViewerTicket.token_hash == token_hash,
            ViewerTicket.used_at.is_(None),
            ViewerTicket.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.execute(
        select(ViewerTicket).where(ViewerTicket.token_hash == token_hash)
    ).scalar_one()


@dataclass(frozen=True, slots=True)
class Admission:
    """A viewer the relay let in: whose, which session, what it may do."""

    session_id: SessionId
    device_id: str
    user_id: int
    username: str
    mode: Mode
    clipboard: bool


class Refused(Exception):
    """A viewer is not let in. ``code`` is for the audit trail (the viewer gets only a
    403); ``ticket`` is set when the ticket itself was good."""

    def __init__(self, code: str, ticket: ViewerTicket | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.ticket = ticket


def admit_viewer(session: Session, secret: object, now: datetime) -> Admission:
    """Spend ``secret`` and check everything a join needs: the ticket, the session
    (``accepted`` or ``started``, the ticket's own), and :func:`viewer_rights` for the
    ticket's mode. Raises :class:`Refused`. The caller commits (the ticket stays spent
    even when the join is refused: a ticket is good for one try)."""
    ticket = redeem_ticket(session, secret, now)
    if ticket is None:
        raise Refused("bad-ticket")
    row = session.get(DesktopSession, ticket.session_id)
    if row is None or row.state not in JOINABLE:
        raise Refused("session-not-joinable", ticket)
    if (row.user_id, row.device_id, row.mode) != (ticket.user_id, ticket.device_id, ticket.mode):
        raise Refused("ticket-mismatch", ticket)
    rights = viewer_rights(session, ticket.user_id, ticket.device_id, Mode(ticket.mode))
    if rights is None:
        raise Refused("no-rights", ticket)
    return Admission(
        row.id, row.device_id, ticket.user_id, row.username, rights.mode, rights.clipboard
    )


def recheck_viewer(session: Session, admission: Admission) -> ViewerRights:
    """The relay's periodic check of a live viewer. Raises :class:`Refused`:
    ``session-not-joinable`` (the session is over) or ``no-rights``
    (:func:`viewer_rights` no longer holds)."""
    state = session.scalar(
        select(DesktopSession.state).where(DesktopSession.id == admission.session_id)
    )
    if state not in JOINABLE:
        raise Refused("session-not-joinable")
    rights = viewer_rights(session, admission.user_id, admission.device_id, admission.mode)
    if rights is None:
        raise Refused("no-rights")
    return rights


# -- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentPolicy:
    """The device's consent setting as its agent last reported it."""

    consent_required: bool
    remote_consent_allowed: bool | None
    reported_at: datetime
    consent_timeout_s: int | None = None


def record_policy(
    session: Session,
    device_id: str,
    *,
    consent_required: bool,
    consent_timeout_s: int,
    remote_consent_allowed: bool,
    now: datetime,
    actor: Actor,
) -> bool:
    """Store what the device's agent reported on connecting; whether it changed (a
    change, and the first report, are audited: consent turned off is a fact to keep)."""
    timeout = max(1, min(consent_timeout_s, CONSENT_TIMEOUT_MAX))
    values = (consent_required, timeout, remote_consent_allowed)
    row = session.get(DevicePolicy, device_id)
    before = (
        None
        if row is None
        else (row.consent_required, row.consent_timeout_s, row.remote_consent_allowed)
    )
    if row is None:
        row = DevicePolicy(device_id=device_id)
        session.add(row)
    row.consent_required, row.consent_timeout_s, row.remote_consent_allowed = values
    row.reported_at = now
    if before == values:
        return False
    append_audit(
        session,
        "desktop.policy_reported",
        actor=actor.name,
        user_id=actor.user_id,
        source=actor.source,
        device_id=device_id,
        now=now,
        summary="the device reported its consent setting: "
        + ("consent required" if consent_required else "NO consent asked"),
        details={
            "consent_required": consent_required,
            "consent_timeout_s": timeout,
            "remote_consent_allowed": remote_consent_allowed,
            "previous": None
            if before is None
            else dict(
                zip(
                    ("consent_required", "consent_timeout_s", "remote_consent_allowed"),
                    before,
                    strict=True,
                )
            ),
        },
    )
    return True


def last_reported_policy(session: Session, device_id: str) -> ConsentPolicy | None:
    """What the agent reported on connecting or, from an agent that does not report it
    then, with the newest request it answered; None before either."""
    reported = session.get(DevicePolicy, device_id)
    if reported is not None:
        return ConsentPolicy(
            reported.consent_required,
            reported.remote_consent_allowed,
            reported.reported_at,
            reported.consent_timeout_s,
        )
    row = session.execute(
        select(
            DesktopSession.consent_required,
            DesktopSession.remote_consent_allowed,
            DesktopSession.requested_at,
        )
        .where(DesktopSession.device_id == device_id, DesktopSession.consent_required.is_not(None))
        .order_by(DesktopSession.requested_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return ConsentPolicy(bool(row.consent_required), row.remote_consent_allowed, row.requested_at)
