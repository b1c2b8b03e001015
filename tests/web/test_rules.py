"""The rules editor: validated at save time (bad syntax -> HTTP 400 with the parser's
message and the form kept), edit, delete, audited; the notifications log."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from store.portal import AuditEvent
from store.telemetry.alarms import TelemetryAlarm
from store.telemetry.notifications import decide_notification
from store.telemetry.rules import TelemetryRule, list_rules
from tests.web.conftest import Fleet, csrf_token
from tests.web.test_alarms import open_alarm
from web.db import db

GOOD = "when code E9* then alarm urgent, email service@vendor.example"


def rules(app: Flask) -> list[tuple[str, str, bool]]:
    with app.app_context():
        return [(r.name, r.text, r.enabled) for r in list_rules(db.session)]


def rule_audit(app: Flask) -> list[tuple[str, dict[str, object]]]:
    with app.app_context():
        return [
            (e.kind, json.loads(e.details or "{}"))
            for e in db.session.scalars(
                select(AuditEvent)
                .where(AuditEvent.kind.like("telemetry.rule_%"))
                .order_by(AuditEvent.id)
            )
        ]


def save(client: FlaskClient, url: str, page: str | None = None, **form: str) -> tuple[int, str]:
    """POST ``form`` to ``url`` with the CSRF token of ``page`` (default: ``url`` itself)."""
    token = csrf_token(client, page or url)
    response = client.post(url, data={"csrf_token": token, **form}, follow_redirects=True)
    return response.status_code, response.get_data(as_text=True)


def test_a_rule_is_created_listed_and_audited(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    root = client_for("root")
    status, page = save(root, "/rules/new", name="Tube arcs", text=GOOD, enabled="y")
    assert status == 200 and "Rule &#39;Tube arcs&#39; saved" in page
    assert html.escape(GOOD) in page
    assert rules(app) == [("Tube arcs", GOOD, True)]
    assert rule_audit(app) == [
        (
            "telemetry.rule_create",
            {"rule_id": 1, "name": "Tube arcs", "text": GOOD, "enabled": True},
        )
    ]


def test_bad_syntax_is_refused_with_where_and_what_and_the_form_kept(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    root = client_for("root")
    bad = "when metric cpu.percent > ninety then alarm"
    status, page = save(root, "/rules/new", name="Hot CPU", text=bad)
    assert status == 400
    assert "at column 27: expected a number, got &#39;ninety&#39;" in page
    assert 'value="Hot CPU"' in page and html.escape(bad) in page  # kept as typed
    assert f"{bad}\n{' ' * 26}^" in html.unescape(page)  # the caret under the mistake
    status, page = save(root, "/rules/new", name="Regex", text='when message ~ "(a+)+" then alarm')
    assert status == 400 and "nested repetition like (a+)+ is not allowed" in page
    status, page = save(root, "/rules/new", name="", text=GOOD)
    assert status == 400 and "This field is required." in page
    assert rules(app) == [] and rule_audit(app) == []


def test_edit_validates_too_and_delete_keeps_the_alarms(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    root = client_for("root")
    save(root, "/rules/new", name="Tube arcs", text=GOOD, enabled="y")
    status, page = save(root, "/rules/1", name="Tube arcs", text="when code E9* then explode")
    assert status == 400 and "at column 20: expected one of: alarm, email" in page
    assert rules(app) == [("Tube arcs", GOOD, True)]
    changed = "when code E9* on customer acme then alarm warning"
    status, _ = save(root, "/rules/1", name="Acme arcs", text=changed)  # enabled unticked
    assert status == 200 and rules(app) == [("Acme arcs", changed, False)]
    alarm_id = open_alarm(app, fleet.device_a1, key="rule:1")
    with app.app_context():
        alarm = db.session.get(TelemetryAlarm, alarm_id)
        assert alarm is not None
        alarm.rule_id = 1
        db.session.commit()
    status, page = save(root, "/rules/1/delete", "/rules")
    assert status == 200 and "deleted; the alarms it opened stay" in page
    with app.app_context():
        assert db.session.get(TelemetryRule, 1) is None
        alarm = db.session.get(TelemetryAlarm, alarm_id)
        assert alarm is not None and alarm.rule_id is None
    assert [k for k, _ in rule_audit(app)] == [
        "telemetry.rule_create",
        "telemetry.rule_update",
        "telemetry.rule_delete",
    ]
    assert rule_audit(app)[1][1]["text"] == changed
    assert root.get("/rules/1").status_code == 404


def test_rules_and_the_notifications_log_are_for_rule_managers_only(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    alarm_id = open_alarm(app, fleet.device_a1)
    with app.app_context():
        decide_notification(
            db.session,
            channel="email",
            target="service@vendor.example",
            dedup_key=f"{fleet.device_a1}:code:E9001",
            alarm_id=alarm_id,
            rule_id=None,
            device_id=fleet.device_a1,
            now=datetime.now(UTC),
            dedup_window=timedelta(minutes=30),
            rate_limit=10,
            rate_window=timedelta(hours=1),
        )
        db.session.commit()
    page = client_for("root").get("/rules/notifications").get_data(as_text=True)
    assert "service@vendor.example" in page and "pending" in page
    for user in ("eng", "ana", "contact"):
        assert client_for(user).get("/rules").status_code == 403
        assert client_for(user).get("/rules/notifications").status_code == 403
    # The alarm's own page lists its notifications to those who handle alarms only.
    alarm_page = client_for("eng").get(f"/alarms/{alarm_id}").get_data(as_text=True)
    assert "service@vendor.example" in alarm_page
    for viewer in ("ana", "contact"):
        page = client_for(viewer).get(f"/alarms/{alarm_id}").get_data(as_text=True)
        assert "E9001" in page and "service@vendor.example" not in page
