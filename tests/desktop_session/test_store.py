"""store.desktop: the state table, tickets, the shared rights check, the server's deadlines.

Each test runs on SQLite and, when configured, PostgreSQL (``db_url``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from protocol.desktop import BY_POLICY, CONSENT_TIMEOUT_MAX, Mode, State
from store import desktop
from store.db import session_scope
from store.desktop import (
    Actor,
    DesktopSession,
    Refused,
    ViewerRights,
)
from store.portal import AuditEvent, verify_chain
from tests.desktop_session.world import World, disable_user, revoke_permission, seed
from web.authz import Perm

NOW = datetime(2025, 11, 28, 12, 0, tzinfo=UTC)
RELAY = Actor("relay:test")


@pytest.fixture
def world(db_engine: Engine) -> World:
    return seed(db_engine)


def new_session(
    engine: Engine,
    world: World,
    user: str = "eng",
    mode: Mode = Mode.CONTROL,
    device: str | None = None,
    now: datetime = NOW,
) -> str:
    with session_scope(engine) as session:
        row = desktop.create_session(
            session,
            device_id=device or world.device_a,
            user_id=world.users[user],
            username=user,
            mode=mode,
            reason="printer jam",
            consent_timeout_s=30,
            now=now,
        )
        return row.id


def accepted_session(engine: Engine, world: World, **kwargs: object) -> str:
    sid = new_session(engine, world, **kwargs)  # type: ignore[arg-type]
    with session_scope(engine) as session:
        assert desktop.record_decision(
            session,
            sid,
            State.ACCEPTED,
            by="device",
            reason="accepted on the device",
            now=NOW,
            actor=RELAY,
        )
    return sid


def state_of(engine: Engine, sid: str) -> str:
    with session_scope(engine) as session:
        return str(session.scalar(select(DesktopSession.state).where(DesktopSession.id == sid)))


def test_permission_names_match_the_portal() -> None:
    assert Perm.DESKTOP_VIEW.value == desktop.PERM_VIEW
    assert Perm.DESKTOP_CONTROL.value == desktop.PERM_CONTROL
    assert Perm.DESKTOP_CLIPBOARD.value == desktop.PERM_CLIPBOARD


def test_transitions_follow_the_table_and_final_states_stay(
    db_engine: Engine, world: World
) -> None:
    sid = new_session(db_engine, world)
    with session_scope(db_engine) as session:
        assert desktop.record_started(session, sid, viewer="eng", now=NOW, actor=RELAY) is None
        assert desktop.record_prompting(
            session, sid, consent_timeout_s=20, remote_consent_allowed=True, now=NOW, actor=RELAY
        )
        assert desktop.record_decision(
            session,
            sid,
            State.DENIED,
            by="device",
            reason="denied on the device",
            now=NOW,
            actor=RELAY,
        )
        # A late acceptance, a start and an end after the denial change nothing.
        assert (
            desktop.record_decision(
                session, sid, State.ACCEPTED, by="device", reason="", now=NOW, actor=RELAY
            )
            is None
        )
        assert desktop.record_started(session, sid, viewer="eng", now=NOW, actor=RELAY) is None
        assert desktop.record_ended(session, sid, reason="x", now=NOW, actor=RELAY) is None
        row = session.get(DesktopSession, sid)
        assert row is not None
        assert (row.state, row.decided_by, row.consent_required, row.remote_consent_allowed) == (
            "denied",
            "device",
            True,
            True,
        )
        kinds = session.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)).all()
        assert kinds == ["desktop.prompting", "desktop.denied"]
        assert verify_chain(session).ok


def test_an_agent_cannot_report_on_another_devices_session(db_engine: Engine, world: World) -> None:
    sid = new_session(db_engine, world)
    with session_scope(db_engine) as session:
        assert (
            desktop.record_decision(
                session,
                sid,
                State.ACCEPTED,
                by="device",
                reason="",
                now=NOW,
                actor=RELAY,
                device_id=world.device_b,
            )
            is None
        )
    assert state_of(db_engine, sid) == "requested"


def test_no_consent_acceptance_is_recorded_as_such(db_engine: Engine, world: World) -> None:
    sid = new_session(db_engine, world)
    with session_scope(db_engine) as session:
        row = desktop.record_decision(
            session,
            sid,
            State.ACCEPTED,
            by=BY_POLICY,
            reason="consent is off on this device",
            now=NOW,
            actor=RELAY,
        )
        assert row is not None and row.consent_required is False
        event = session.scalars(select(AuditEvent).where(AuditEvent.kind == "desktop.accepted"))
        assert '"no_consent":true' in event.one().details
    with session_scope(db_engine) as session:
        policy = desktop.last_reported_policy(session, world.device_a)
        assert policy is not None and policy.consent_required is False


def test_ended_records_duration_and_bytes(db_engine: Engine, world: World) -> None:
    sid = accepted_session(db_engine, world)
    with session_scope(db_engine) as session:
        desktop.record_started(session, sid, viewer="eng", now=NOW, actor=RELAY)
        row = desktop.record_ended(
            session,
            sid,
            reason="ended-by-customer",
            now=NOW + timedelta(seconds=42),
            actor=RELAY,
            bytes_to_viewer=1000,
            bytes_from_viewer=20,
        )
        assert row is not None
        assert (row.end_reason, row.bytes_to_viewer, row.bytes_from_viewer) == (
            "ended-by-customer",
            1000,
            20,
        )
        ended = session.scalars(select(AuditEvent).where(AuditEvent.kind == "desktop.ended"))
        assert '"duration_s":42.0' in ended.one().details


# -- tickets ------------------------------------------------------------------------------


def issue(engine: Engine, sid: str, now: datetime = NOW) -> str:
    with session_scope(engine) as session:
        row = session.get(DesktopSession, sid)
        assert row is not None
        return desktop.issue_ticket(session, row, now)


def admit(engine: Engine, secret: str, now: datetime = NOW) -> desktop.Admission:
    with session_scope(engine) as session:
        return desktop.admit_viewer(session, secret, now)


def test_ticket_is_single_use_and_bound(db_engine: Engine, world: World) -> None:
    sid = accepted_session(db_engine, world)
    secret = issue(db_engine, sid)
    with session_scope(db_engine) as session:
        stored = session.scalar(select(desktop.ViewerTicket.token_hash))
    assert stored != secret and secret not in str(stored)
    admission = admit(db_engine, secret)
    assert admission == desktop.Admission(
        sid, world.device_a, world.users["eng"], "eng", Mode.CONTROL, clipboard=True
    )
    with pytest.raises(Refused, match="bad-ticket"):
        admit(db_engine, secret)  # replayed


def test_expired_altered_and_malformed_tickets_are_refused(db_engine: Engine, world: World) -> None:
    sid = accepted_session(db_engine, world)
    expired = issue(db_engine, sid)
    with pytest.raises(Refused, match="bad-ticket"):
        admit(db_engine, expired, NOW + desktop.TICKET_TTL)
    good = issue(db_engine, sid)
    altered = good[:-1] + ("A" if good[-1] != "A" else "B")
    for bad in (altered, good[:-1], good + "A", "", "x" * 43, good.replace(good[0], "%"), None):
        with pytest.raises(Refused, match="bad-ticket"):
            admit(db_engine, bad)  # type: ignore[arg-type]
    assert admit(db_engine, good).session_id == sid  # the original still works once


def test_a_ticket_for_a_session_that_is_over_is_refused(db_engine: Engine, world: World) -> None:
    sid = accepted_session(db_engine, world)
    secret = issue(db_engine, sid)
    with session_scope(db_engine) as session:
        desktop.record_ended(session, sid, reason="ended-by-customer", now=NOW, actor=RELAY)
    with pytest.raises(Refused, match="session-not-joinable"):
        admit(db_engine, secret)


# -- rights -------------------------------------------------------------------------------


def rights(
    engine: Engine, world: World, user: str, mode: Mode = Mode.CONTROL, device: str | None = None
) -> ViewerRights | None:
    with session_scope(engine) as session:
        return desktop.viewer_rights(session, world.users[user], device or world.device_a, mode)


def test_rights_follow_role_scope_and_account(db_engine: Engine, world: World) -> None:
    assert rights(db_engine, world, "eng") == ViewerRights(Mode.CONTROL, clipboard=True)
    assert rights(db_engine, world, "root", device=world.device_b) is not None
    assert rights(db_engine, world, "eng", device=world.device_b) is None  # other customer
    assert rights(db_engine, world, "ana", Mode.VIEW) is None  # no desktop permission
    assert rights(db_engine, world, "contact", Mode.VIEW) is None
    revoke_permission(db_engine, "service_engineer", "desktop.clipboard")
    assert rights(db_engine, world, "eng") == ViewerRights(Mode.CONTROL, clipboard=False)
    revoke_permission(db_engine, "service_engineer", "desktop.control")
    assert rights(db_engine, world, "eng") is None
    assert rights(db_engine, world, "eng", Mode.VIEW) is not None
    disable_user(db_engine, world.users["eng"])
    assert rights(db_engine, world, "eng", Mode.VIEW) is None


def test_recheck_fails_once_rights_or_session_are_gone(db_engine: Engine, world: World) -> None:
    sid = accepted_session(db_engine, world)
    admission = admit(db_engine, issue(db_engine, sid))
    with session_scope(db_engine) as session:
        assert desktop.recheck_viewer(session, admission).clipboard
    disable_user(db_engine, world.users["eng"])
    with session_scope(db_engine) as session, pytest.raises(Refused, match="no-rights"):
        desktop.recheck_viewer(session, admission)
    with session_scope(db_engine) as session:
        desktop.record_ended(session, sid, reason="ended-by-customer", now=NOW, actor=RELAY)
    with session_scope(db_engine) as session, pytest.raises(Refused, match="not-joinable"):
        desktop.recheck_viewer(session, admission)


# -- the server's deadlines ---------------------------------------------------------------


def test_sweep_times_out_undecided_and_ends_unjoined(db_engine: Engine, world: World) -> None:
    undecided = new_session(db_engine, world)
    unjoined = accepted_session(db_engine, world, user="eng2")
    fresh = new_session(db_engine, world, user="root", now=NOW + timedelta(seconds=30))
    ticket = issue(db_engine, unjoined)
    with session_scope(db_engine) as session:  # just before the deadline: nothing happens
        assert desktop.sweep(session, NOW + timedelta(seconds=34), RELAY) == []
    later = NOW + desktop.JOIN_DEADLINE + timedelta(seconds=1)
    with session_scope(db_engine) as session:
        changed = {row.id: row.state for row in desktop.sweep(session, later, RELAY)}
    assert changed == {undecided: "timeout", unjoined: "ended", fresh: "timeout"}
    with session_scope(db_engine) as session:
        row = session.get(DesktopSession, undecided)
        assert row is not None and row.decided_by == desktop.BY_SERVER_TIMEOUT
        # Spent or not, tickets are gone a day after they expired.
        desktop.sweep(session, later + desktop.TICKET_RETENTION + desktop.TICKET_TTL, RELAY)
        assert session.scalar(select(func.count()).select_from(desktop.ViewerTicket)) == 0
        assert verify_chain(session).ok
    with pytest.raises(Refused):
        admit(db_engine, ticket, later)


def test_the_reported_policy_is_stored_and_changes_are_audited(
    db_engine: Engine, world: World
) -> None:
    def report(required: bool, timeout: int, remote: bool, at: datetime) -> bool:
        with session_scope(db_engine) as session:
            return desktop.record_policy(
                session,
                world.device_a,
                consent_required=required,
                consent_timeout_s=timeout,
                remote_consent_allowed=remote,
                now=at,
                actor=RELAY,
            )

    def audited() -> list[str]:
        with session_scope(db_engine) as session:
            return list(
                session.scalars(
                    select(AuditEvent.details)
                    .where(AuditEvent.kind == "desktop.policy_reported")
                    .order_by(AuditEvent.id)
                )
            )

    with session_scope(db_engine) as session:
        assert desktop.last_reported_policy(session, world.device_a) is None
    assert report(True, 30, False, NOW)  # the first report
    assert not report(True, 30, False, NOW + timedelta(hours=1))  # reconnect, same setting
    with session_scope(db_engine) as session:
        policy = desktop.last_reported_policy(session, world.device_a)
    assert policy == desktop.ConsentPolicy(True, False, NOW + timedelta(hours=1), 30)
    assert report(False, 9999, False, NOW + timedelta(hours=2))  # the customer turned it off
    with session_scope(db_engine) as session:
        policy = desktop.last_reported_policy(session, world.device_a)
    assert policy is not None and not policy.consent_required
    assert policy.consent_timeout_s == CONSENT_TIMEOUT_MAX
    details = audited()
    assert len(details) == 2
    assert '"previous":{"consent_required":true' in details[1].replace(" ", "")
