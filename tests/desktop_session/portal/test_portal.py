"""The portal's desktop routes with the real app and database; the relay is a stand-in
that answers instructions the way the agent does (tested for real in test_relay_view
and test_browser)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from protocol.desktop import EndReason
from store import desktop
from store.desktop import DesktopSession
from store.portal import AuditEvent
from tests.desktop_session.portal.conftest import AgentStandIn
from tests.web.conftest import Fleet, csrf_token, make_user
from web.db import db
from web.desktop import END_REASONS


def request(
    client: FlaskClient, device: str, mode: str = "control", reason: str = "error 42"
) -> str:
    token = csrf_token(client, f"/devices/{device}/desktop")
    response = client.post(
        f"/devices/{device}/desktop", data={"csrf_token": token, "mode": mode, "reason": reason}
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    match = re.search(r"session=([0-9a-f-]{36})", response.headers["Location"])
    assert match
    return match.group(1)


def state(client: FlaskClient, device: str, sid: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/devices/{device}/desktop?session={sid}")
    assert response.status_code == 200
    data: dict[str, Any] = response.get_json()
    return data


def post_json(client: FlaskClient, path: str, body: dict[str, Any]) -> Any:
    token = csrf_token(client, "/account")
    return client.post(path, json=body, headers={"X-CSRFToken": token})


def kinds(app: Flask) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)))


def test_request_asks_the_agent_and_shows_the_countdown(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    eng = client_for("eng")
    sid = request(eng, fleet.device_a1)
    instruction = relay_calls.calls[0]["instruction"]
    assert relay_calls.calls[0]["device"] == fleet.device_a1
    assert instruction == {
        "action": "desktop.request",
        "session_id": sid,
        "mode": "control",
        "requester": {"user": "eng", "name": "Eng", "organisation": "Remote service"},
        "reason": "error 42",
    }
    data = state(eng, fleet.device_a1, sid)
    assert data["state"] == "prompting" and not data["joinable"] and not data["final"]
    assert 28 <= data["seconds_left"] <= 30
    page = eng.get(f"/devices/{fleet.device_a1}/desktop?session={sid}")
    assert "connect-src 'self' wss://relay.test" in page.headers["Content-Security-Policy"]
    assert 'type="module"' in page.get_data(as_text=True)
    # Not joinable yet: no ticket.
    assert (
        post_json(
            eng, f"/api/v1/devices/{fleet.device_a1}/desktop/ticket", {"session": sid}
        ).status_code
        == 409
    )
    assert kinds(app)[-2:] == ["desktop.requested", "desktop.prompting"]


def test_consent_off_gives_a_ticket_for_the_relay(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    relay_calls.answers["desktop.request"] = {"state": "accepted", "consent_required": False}
    eng = client_for("eng")
    sid = request(eng, fleet.device_a1, mode="view")
    data = state(eng, fleet.device_a1, sid)
    assert data["state"] == "accepted" and data["joinable"]
    assert "does not ask for consent" in data["message"]
    response = post_json(eng, f"/api/v1/devices/{fleet.device_a1}/desktop/ticket", {"session": sid})
    assert response.status_code == 200
    ticket = response.get_json()
    assert re.fullmatch(r"wss://relay\.test:8445/view\?ticket=[A-Za-z0-9_-]{43}", ticket["url"])
    assert (ticket["mode"], ticket["expires_in"]) == ("view", 60)
    accepted = [k for k in kinds(app) if k.startswith("desktop.")]
    assert accepted == ["desktop.requested", "desktop.accepted", "desktop.ticket_issued"]


def test_offline_device_fails_with_a_clear_message(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    relay_calls.answers["desktop.request"] = ValueError("offline")
    eng = client_for("eng")
    sid = request(eng, fleet.device_a1)
    data = state(eng, fleet.device_a1, sid)
    assert data["state"] == "failed" and data["final"]
    assert data["message"] == "The device could not be asked: it is offline. Nothing was started."


def test_an_answer_the_portal_cannot_read_fails_the_request(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    relay_calls.answers["desktop.request"] = {"state": "prompting", "timeout_s": "soon"}
    eng = client_for("eng")
    data = state(eng, fleet.device_a1, request(eng, fleet.device_a1))
    assert (data["state"], data["end_reason"]) == ("failed", "bad-answer")
    assert data["message"] == (
        "The device could not be asked: its answer was not understood. Nothing was started."
    )


def test_session_ids_are_taken_in_canonical_form_only(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    """The same rule as the agent's and the relay's (`protocol.desktop.parse_session_id`):
    the upper-case spelling of an existing session names nothing."""
    eng = client_for("eng")
    sid = request(eng, fleet.device_a1)
    path = f"/api/v1/devices/{fleet.device_a1}/desktop"
    assert eng.get(f"{path}?session={sid}").status_code == 200
    assert eng.get(f"{path}?session={sid.upper()}").status_code == 404
    assert post_json(eng, f"{path}/ticket", {"session": sid.upper()}).status_code == 404


def test_every_end_reason_reads_as_a_sentence() -> None:
    assert set(EndReason) <= END_REASONS.keys()


def test_scoped_engineer_cannot_request_another_customers_device(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    eng = client_for("eng")
    token = csrf_token(eng, f"/devices/{fleet.device_a1}/desktop")
    for path in (
        f"/devices/{fleet.device_b1}/desktop",
        f"/api/v1/devices/{fleet.device_b1}/desktop?session=x",
    ):
        assert eng.get(path).status_code == 404, path
    response = eng.post(
        f"/devices/{fleet.device_b1}/desktop", data={"csrf_token": token, "mode": "view"}
    )
    assert response.status_code == 404
    assert relay_calls.calls == []
    with app.app_context():
        assert db.session.scalar(select(DesktopSession.id)) is None


def test_control_needs_its_own_permission_and_sessions_stay_private(
    app: Flask,
    fleet: Fleet,
    users: dict[str, int],
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    with app.app_context():
        make_user("viewer", "service_engineer", customers=(fleet.customer_a,))
        from tests.desktop_session.world import revoke_permission

        revoke_permission(db.engine, "service_engineer", "desktop.control")
    eng = client_for("eng")
    token = csrf_token(eng, f"/devices/{fleet.device_a1}/desktop")
    response = eng.post(
        f"/devices/{fleet.device_a1}/desktop", data={"csrf_token": token, "mode": "control"}
    )
    assert response.status_code == 403
    sid = request(eng, fleet.device_a1, mode="view")
    other = client_for("viewer")  # same customer, same role: still not their session
    assert other.get(f"/api/v1/devices/{fleet.device_a1}/desktop?session={sid}").status_code == 404
    assert (
        post_json(
            other, f"/api/v1/devices/{fleet.device_a1}/desktop/ticket", {"session": sid}
        ).status_code
        == 404
    )
    assert client_for("ana").get(f"/devices/{fleet.device_a1}/desktop").status_code == 403


def test_undecided_request_times_out_on_the_server(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    eng = client_for("eng")
    sid = request(eng, fleet.device_a1)
    with app.app_context():
        db.session.execute(
            update(DesktopSession).values(
                decision_deadline=datetime.now(UTC) - timedelta(seconds=1)
            )
        )
        db.session.commit()
    data = state(eng, fleet.device_a1, sid)
    assert data["state"] == "timeout" and data["final"]
    assert "declined" in data["message"]
    assert kinds(app)[-1] == "desktop.timeout"


def test_site_contact_answers_where_the_device_allows_it(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    sid = request(client_for("eng"), fleet.device_a1)
    contact = client_for("contact")
    page = contact.get(f"/devices/{fleet.device_a1}/desktop/consent").get_data(as_text=True)
    assert "error 42" in page and "Accept" in page
    token = csrf_token(contact, f"/devices/{fleet.device_a1}/desktop/consent")
    response = contact.post(
        f"/devices/{fleet.device_a1}/desktop/consent",
        data={"csrf_token": token, "session": sid, "decision": "accept"},
    )
    assert response.status_code == 302
    assert relay_calls.calls[-1]["instruction"] == {
        "action": "desktop.answer",
        "session_id": sid,
        "decision": "accept",
        "by": {"user": "contact", "name": "Contact"},
    }
    data = state(client_for("eng"), fleet.device_a1, sid)
    assert data["state"] == "accepted" and data["decided_by"] == "site-contact:contact"
    # A device that does not allow it refuses; nothing changes here.
    sid2 = request(client_for("root"), fleet.device_a1)
    relay_calls.answers["desktop.answer"] = ValueError("forbidden")
    response = contact.post(
        f"/devices/{fleet.device_a1}/desktop/consent",
        data={"csrf_token": token, "session": sid2, "decision": "accept"},
        follow_redirects=True,
    )
    assert "only takes answers at the device" in response.get_data(as_text=True)
    assert state(client_for("root"), fleet.device_a1, sid2)["state"] == "prompting"
    assert client_for("eng").get(f"/devices/{fleet.device_a1}/desktop/consent").status_code == 403


def test_an_administrator_cannot_accept_their_own_request(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    """The issue's case: on a device that takes answers from the portal, the administrator
    who asked is refused (nothing reaches the device, the refusal is audited as an
    administrator's), and the site contact's answer is recorded as a site contact's."""
    root = client_for("root")
    sid = request(root, fleet.device_a1)
    device_page = root.get(f"/devices/{fleet.device_a1}").get_data(as_text=True)
    assert "Requests waiting for an answer" not in device_page
    assert root.get(f"/devices/{fleet.device_a1}/desktop/consent").status_code == 403
    asked = len(relay_calls.calls)
    response = root.post(
        f"/devices/{fleet.device_a1}/desktop/consent",
        data={
            "csrf_token": csrf_token(root, "/account"),
            "session": sid,
            "decision": "accept",
        },
    )
    assert response.status_code == 403
    assert len(relay_calls.calls) == asked
    assert state(root, fleet.device_a1, sid)["state"] == "prompting"

    contact = client_for("contact")
    assert "Requests waiting for an answer" in contact.get(f"/devices/{fleet.device_a1}").get_data(
        as_text=True
    )
    response = contact.post(
        f"/devices/{fleet.device_a1}/desktop/consent",
        data={
            "csrf_token": csrf_token(contact, f"/devices/{fleet.device_a1}/desktop/consent"),
            "session": sid,
            "decision": "accept",
        },
    )
    assert response.status_code == 302
    assert state(root, fleet.device_a1, sid)["decided_by"] == "site-contact:contact"
    with app.app_context():
        events = [
            (e.kind, e.actor, json.loads(e.details).get("role"))
            for e in db.session.scalars(
                select(AuditEvent)
                .where(AuditEvent.kind.in_(("desktop.answer_refused", "desktop.answered")))
                .order_by(AuditEvent.id)
            )
        ]
    assert events == [
        ("desktop.answer_refused", "root", "administrator"),
        ("desktop.answered", "contact", "site_contact"),
    ]


def test_end_asks_the_device_and_records_it_when_the_device_cannot(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    eng = client_for("eng")
    sid = request(eng, fleet.device_a1)
    relay_calls.answers["desktop.end"] = ConnectionRefusedError("relay down")
    response = post_json(eng, f"/api/v1/devices/{fleet.device_a1}/desktop/end", {"session": sid})
    assert response.get_json()["state"] == "ended"
    assert relay_calls.calls[-1]["instruction"] == {"action": "desktop.end", "session_id": sid}
    assert response.get_json()["message"] == "The session ended: it was ended from the portal."


def test_device_page_shows_consent_policy_and_the_way_in(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
    relay_calls: AgentStandIn,
) -> None:
    eng = client_for("eng")
    page = eng.get(f"/devices/{fleet.device_a1}").get_data(as_text=True)
    assert "Not known yet" in page and "Request remote desktop" in page
    request(eng, fleet.device_a1)
    page = eng.get(f"/devices/{fleet.device_a1}").get_data(as_text=True)
    assert "asked to accept each session" in page and "site contacts may also answer" in page
    assert "Remote desktop" not in client_for("ana").get(f"/devices/{fleet.device_a1}").get_data(
        as_text=True
    )


def test_device_page_shows_the_setting_the_device_reported_before_any_request(
    app: Flask,
    fleet: Fleet,
    client_for: Callable[[str], FlaskClient],
) -> None:
    def report(required: bool, timeout: int, remote: bool) -> None:
        with app.app_context():
            desktop.record_policy(
                db.session,
                fleet.device_a1,
                consent_required=required,
                consent_timeout_s=timeout,
                remote_consent_allowed=remote,
                now=datetime.now(UTC),
                actor=desktop.Actor("relay:test"),
            )
            db.session.commit()

    eng = client_for("eng")
    report(True, 45, True)
    page = eng.get(f"/devices/{fleet.device_a1}").get_data(as_text=True)
    assert 'data-consent="required"' in page and "within 45 s" in page
    assert "site contacts may also answer" in page
    assert "within 45 s" in eng.get(f"/devices/{fleet.device_a1}/desktop").get_data(as_text=True)
    report(False, 30, False)  # the customer turned consent off; the agent reconnected
    page = eng.get(f"/devices/{fleet.device_a1}").get_data(as_text=True)
    assert 'data-consent="off"' in page and "does not ask for consent" in page
