"""Web hardening: headers, CSRF, hostile agent data shown inert, clean error pages, and a
database outage that gives a 503 page and leaves no half-written records."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import OperationalError

from store.models import Device, Presence
from store.portal import AuditEvent, User
from tests.web.conftest import Fleet, csrf_token, new_client
from web import create_app
from web.authz import public
from web.db import db

HOSTILE = {
    "hostname": "<script>alert('host')</script>",
    "model": "javascript:alert('model')",
    "agent_version": '"><img src=x onerror=alert(1)>',
}


def test_security_headers_on_every_kind_of_answer(
    app: Flask, client_for: Callable[[str], FlaskClient]
) -> None:
    client = client_for("eng")
    for path in ("/login", "/devices", "/api/v1/devices", "/does-not-exist", "/static/portal.css"):
        response = client.get(path)
        headers = response.headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        response.close()
    assert client.get("/devices").headers["Cache-Control"] == "no-store"


def test_no_inline_script_or_style_in_any_template() -> None:
    templates = Path(__file__).parents[2] / "web" / "templates"
    for path in templates.rglob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path
        assert " style=" not in text and "<style" not in text, path
        assert not re.search(r"\bon[a-z]+=", text), path  # no inline event handlers
        assert "|safe" not in text.replace(" ", ""), path


def test_post_without_csrf_token_is_refused(
    app: Flask, client_for: Callable[[str], FlaskClient]
) -> None:
    admin = client_for("root")
    response = admin.post("/admin/users/new", data={"username": "sneaky", "role": "analyst"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.scalar(select(User).where(User.username == "sneaky")) is None
    response = admin.post("/logout")
    assert response.status_code == 400
    assert admin.get("/devices").status_code == 200  # still signed in
    # A token from another session does not work either.
    other = new_client(app)
    foreign = csrf_token(other)
    assert admin.post("/logout", data={"csrf_token": foreign}).status_code == 400
    # Cross-site post (wrong Referer) with a valid token is refused too.
    token = csrf_token(admin, "/account")
    response = admin.post(
        "/logout", data={"csrf_token": token}, headers={"Referer": "https://evil.example/"}
    )
    assert response.status_code == 400


def test_hostile_agent_fields_render_as_inert_text(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    with app.app_context():
        db.session.execute(
            update(Device)
            .where(Device.id == fleet.device_a1)
            .values(hostname=HOSTILE["hostname"], model=HOSTILE["model"])
        )
        db.session.execute(
            update(Presence)
            .where(Presence.device_id == fleet.device_a1)
            .values(agent_version=HOSTILE["agent_version"])
        )
        db.session.commit()
    admin = client_for("root")
    pages = [
        admin.get(p).get_data(as_text=True)
        for p in (
            "/devices",
            f"/devices/{fleet.device_a1}",
            f"/sites/{fleet.site_a1}",
            "/devices?q=%3Cscript%3E",
            "/audit",
        )
    ]
    for page in pages:
        assert "<script>alert" not in page
        assert "<img src=x" not in page
        assert 'href="javascript:' not in page.replace("'", '"')
    device_page = pages[1]
    assert "&lt;script&gt;alert(&#39;host&#39;)&lt;/script&gt;" in device_page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in device_page
    api = admin.get(f"/api/v1/devices/{fleet.device_a1}")
    assert api.mimetype == "application/json"
    assert api.get_json()["hostname"] == HOSTILE["hostname"]  # data intact, just not markup


@pytest.fixture
def crashing_app(app: Flask) -> Flask:
    app.config["TESTING"] = False  # errors are handled as in production

    @public
    def crash() -> str:
        raise RuntimeError("password=hunter2 at db.internal")

    app.add_url_rule("/crash", "crash", crash)
    return app


def test_errors_show_no_trace_or_secret(crashing_app: Flask) -> None:
    response = new_client(crashing_app).get("/crash")
    text = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "hunter2" not in text and "Traceback" not in text and "RuntimeError" not in text
    assert "Something went wrong" in text


def test_database_down_gives_a_clean_503(tmp_path: Path) -> None:
    app = create_app(
        {
            "database_url": "postgresql+psycopg://nobody:x@127.0.0.1:9/none",
            "data_dir": tmp_path / "portal",
        }
    )
    client = new_client(app)
    client.set_cookie("__Host-outlink-session", "x" * 43, domain="localhost", secure=True)
    for path in ("/login", "/devices", "/healthz"):
        response = client.get(path)
        text = response.get_data(as_text=True)
        assert response.status_code == 503, path
        assert "Temporarily unavailable" in text and "psycopg" not in text and "nobody" not in text


def test_database_failing_mid_change_leaves_no_half_written_records(
    app: Flask, client_for: Callable[[str], FlaskClient]
) -> None:
    app.config["TESTING"] = False
    admin = client_for("root")
    token = csrf_token(admin, "/admin/users/new")
    with app.app_context():
        engine = db.engine
        before = db.session.scalar(select(func.count()).select_from(AuditEvent))

    def fail_audit_insert(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_EVENTS"):
            raise OperationalError(statement, parameters, Exception("connection lost"))

    event.listen(engine, "before_cursor_execute", fail_audit_insert)
    try:
        response = admin.post(
            "/admin/users/new",
            data={"csrf_token": token, "username": "halfway", "role": "analyst", "all_scope": "y"},
        )
    finally:
        event.remove(engine, "before_cursor_execute", fail_audit_insert)
    assert response.status_code == 503
    assert "Nothing was changed" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(User).where(User.username == "halfway")) is None
        assert db.session.scalar(select(func.count()).select_from(AuditEvent)) == before
    # The portal recovers by itself once the database answers again.
    assert admin.get("/admin/users").status_code == 200
