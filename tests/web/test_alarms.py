"""Alarms in the portal: the scoped list and filters, an alarm's page, acknowledge, comment
and close (audited, CSRF-protected), and state errors shown as messages."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from store.portal import AuditEvent
from store.telemetry.alarms import TelemetryAlarm, alarm_comments, raise_alarm
from telemetry.records import Severity
from tests.web.conftest import Fleet, csrf_token
from web.db import db


def open_alarm(
    app: Flask,
    device_id: str,
    key: str = "code:E9001",
    severity: Severity = Severity.URGENT,
    title: str = "E9001: tube arc",
) -> int:
    with app.app_context():
        alarm, opened = raise_alarm(
            db.session,
            device_id=device_id,
            key=key,
            severity=severity,
            title=title,
            ts=time.time(),
            rule_id=None,
            now=datetime.now(UTC),
        )
        db.session.commit()
        assert opened
        return alarm.id


def alarm_state(app: Flask, alarm_id: int) -> str:
    with app.app_context():
        alarm = db.session.get(TelemetryAlarm, alarm_id)
        assert alarm is not None
        return alarm.state


def audit_kinds(app: Flask) -> list[tuple[str, str | None, dict[str, object]]]:
    with app.app_context():
        return [
            (e.kind, e.actor, json.loads(e.details or "{}"))
            for e in db.session.scalars(
                select(AuditEvent)
                .where(AuditEvent.kind.like("telemetry.%"))
                .order_by(AuditEvent.id)
            )
        ]


def post(client: FlaskClient, url: str, page: str, **data: str) -> str:
    """POST like the page's form would (its CSRF token), follow to the page, return it."""
    token = csrf_token(client, page)
    response = client.post(url, data={"csrf_token": token, **data}, follow_redirects=True)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def test_the_list_shows_only_alarms_in_scope_most_severe_first(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    urgent = open_alarm(app, fleet.device_a1)
    warning = open_alarm(
        app, fleet.device_a2, key="rule:1", severity=Severity.WARNING, title="disk filling up"
    )
    foreign = open_alarm(app, fleet.device_b1, title="E9002: globex only")
    page = client_for("eng").get("/alarms").get_data(as_text=True)
    assert page.index(f'data-alarm-id="{urgent}"') < page.index(f'data-alarm-id="{warning}"')
    assert "globex only" not in page
    assert client_for("eng").get(f"/alarms/{foreign}").status_code == 404  # like a missing one
    assert client_for("eng").get("/alarms/999999").status_code == 404
    assert "globex only" in client_for("root").get("/alarms").get_data(as_text=True)
    only_urgent = client_for("eng").get("/alarms?severity=urgent").get_data(as_text=True)
    assert f'data-alarm-id="{warning}"' not in only_urgent
    contact = client_for("contact").get("/alarms").get_data(as_text=True)  # site A1 only
    assert f'data-alarm-id="{urgent}"' in contact and f'data-alarm-id="{warning}"' not in contact


def test_acknowledge_comment_close_each_audited(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    alarm_id = open_alarm(app, fleet.device_a1)
    eng = client_for("eng")
    page = f"/alarms/{alarm_id}"
    body = post(eng, f"{page}/acknowledge", page)
    assert "Alarm acknowledged" in body and alarm_state(app, alarm_id) == "acknowledged"
    body = post(eng, f"{page}/comment", page, text="  Ordered a new tube <b>now</b>  ")
    assert "Ordered a new tube &lt;b&gt;now&lt;/b&gt;" in body  # escaped, trimmed
    body = post(eng, f"{page}/close", page, text="Tube replaced, test scan fine")
    assert "Alarm closed" in body and alarm_state(app, alarm_id) == "closed"
    with app.app_context():
        texts = [(c.author, c.text) for c in alarm_comments(db.session, alarm_id)]
    assert texts == [
        ("eng", "Ordered a new tube <b>now</b>"),
        ("eng", "Tube replaced, test scan fine"),
    ]
    kinds = [(k, actor) for k, actor, _ in audit_kinds(app)]
    assert kinds == [
        ("telemetry.alarm_ack", "eng"),
        ("telemetry.alarm_comment", "eng"),
        ("telemetry.alarm_comment", "eng"),
        ("telemetry.alarm_close", "eng"),
    ]
    assert all(d["alarm_id"] == alarm_id for _, _, d in audit_kinds(app))
    closed = eng.get("/alarms?state=closed").get_data(as_text=True)
    assert f'data-alarm-id="{alarm_id}"' in closed
    assert f'data-alarm-id="{alarm_id}"' not in eng.get("/alarms").get_data(as_text=True)


def test_state_errors_are_messages_and_change_nothing(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    alarm_id = open_alarm(app, fleet.device_a1)
    eng, root = client_for("eng"), client_for("root")
    page = f"/alarms/{alarm_id}"
    token = csrf_token(eng, page)  # eng's page is loaded; root closes it meanwhile
    post(root, f"{page}/close", page)
    body = eng.post(f"{page}/acknowledge", data={"csrf_token": token}, follow_redirects=True)
    assert "Not acknowledged: an alarm that is closed cannot be acknowledged." in body.get_data(
        as_text=True
    )
    body = eng.post(f"{page}/close", data={"csrf_token": token}, follow_redirects=True)
    assert "Not closed: the alarm is already closed." in body.get_data(as_text=True)
    body = eng.post(
        f"{page}/comment", data={"csrf_token": token, "text": "   "}, follow_redirects=True
    )
    assert "No comment added: the comment is empty." in body.get_data(as_text=True)
    body = eng.post(
        f"{page}/comment", data={"csrf_token": token, "text": "x" * 2001}, follow_redirects=True
    )
    assert "comments are at most 2000 characters" in body.get_data(as_text=True)
    assert [k for k, _, _ in audit_kinds(app)] == ["telemetry.alarm_close"]  # root's only
    with app.app_context():
        assert alarm_comments(db.session, alarm_id) == []


def test_viewers_see_but_cannot_handle_and_posts_need_csrf(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    alarm_id = open_alarm(app, fleet.device_a1)
    ana = client_for("ana")
    page = ana.get(f"/alarms/{alarm_id}").get_data(as_text=True)
    assert "E9001: tube arc" in page and "may look at alarms but not change them" in page
    assert 'id="acknowledge"' not in page
    token = csrf_token(ana, "/account")
    assert (
        ana.post(f"/alarms/{alarm_id}/acknowledge", data={"csrf_token": token}).status_code == 403
    )
    assert client_for("eng").post(f"/alarms/{alarm_id}/acknowledge").status_code == 400
    assert alarm_state(app, alarm_id) == "open"


def test_the_device_page_shows_open_alarms_and_the_logs_section(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    open_alarm(app, fleet.device_a1, title="E9001: shown on the device")
    page = client_for("eng").get(f"/devices/{fleet.device_a1}").get_data(as_text=True)
    assert 'id="device-alarms"' in page and "E9001: shown on the device" in page
    assert 'id="device-logs"' in page and "Fetch logs" in page
    contact = client_for("contact").get(f"/devices/{fleet.device_a1}").get_data(as_text=True)
    assert 'id="device-alarms"' in contact and 'id="device-logs"' not in contact  # no files.view
