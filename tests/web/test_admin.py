"""Administration: users with one-time passwords, roles/scopes that apply at once, tokens,
device revocation in the database plus the relay's RPC, and the operator CLI."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from store.models import Device, EnrollmentToken
from store.portal import AuditEvent
from tests.web.conftest import Fleet, RelayCalls, csrf_token, login, new_client
from web.cli import init_portal, outlink
from web.config import load_config, secret_key
from web.db import db

SECRET_RE = re.compile(r'<p class="secret mono"[^>]*>([^<]+)</p>')


def test_admin_creates_a_scoped_engineer_who_must_change_the_password(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    admin = client_for("root")
    response = admin.post(
        "/admin/users/new",
        data={
            "csrf_token": csrf_token(admin, "/admin/users/new"),
            "username": "newbie",
            "display_name": "New Engineer",
            "role": "service_engineer",
            "customers": [str(fleet.customer_a)],
        },
    )
    assert response.status_code == 200
    match = SECRET_RE.search(response.get_data(as_text=True))
    assert match
    password = match.group(1)
    client = new_client(app)
    assert login(client, "newbie", password).headers["Location"] == "/account/password"
    new_password = "the engineer's own secret"
    client.post(
        "/account/password",
        data={
            "csrf_token": csrf_token(client, "/account/password"),
            "current": password,
            "new": new_password,
            "confirm": new_password,
        },
    )
    listing = client.get("/devices").get_data(as_text=True)
    assert "acme-ct-01" in listing and "globex" not in listing
    with app.app_context():
        created = db.session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "admin.user_created")
        ).one()
        assert created.actor == "root" and '"service_engineer"' in created.details
        assert password not in created.details


def test_edit_scope_applies_on_the_next_request(
    app: Flask, fleet: Fleet, users: dict[str, int], client_for: Callable[[str], FlaskClient]
) -> None:
    eng, admin = client_for("eng"), client_for("root")
    assert eng.get(f"/devices/{fleet.device_b1}").status_code == 404
    response = admin.post(
        f"/admin/users/{users['eng']}",
        data={
            "csrf_token": csrf_token(admin, f"/admin/users/{users['eng']}"),
            "username": "eng",
            "role": "service_engineer",
            "customers": [str(fleet.customer_b)],
            "devices": f"{fleet.device_a1}\nnot-a-device",
        },
    )
    assert "Not a device id" in response.get_data(as_text=True)
    response = admin.post(
        f"/admin/users/{users['eng']}",
        data={
            "csrf_token": csrf_token(admin, f"/admin/users/{users['eng']}"),
            "username": "eng",
            "role": "service_engineer",
            "customers": [str(fleet.customer_b)],
            "devices": fleet.device_a1,
        },
    )
    assert response.status_code == 302
    assert eng.get(f"/devices/{fleet.device_b1}").status_code == 200
    assert eng.get(f"/devices/{fleet.device_a1}").status_code == 200
    assert eng.get(f"/devices/{fleet.device_a2}").status_code == 404


def test_disable_reset_and_last_admin_protection(
    app: Flask, users: dict[str, int], client_for: Callable[[str], FlaskClient]
) -> None:
    admin, ana = client_for("root"), client_for("ana")
    token = csrf_token(admin, "/account")
    admin.post(f"/admin/users/{users['ana']}/disable", data={"csrf_token": token})
    assert ana.get("/devices").status_code == 302
    response = admin.post(f"/admin/users/{users['root']}/disable", data={"csrf_token": token})
    assert response.status_code == 302
    assert admin.get("/devices").status_code == 200  # cannot disable oneself
    admin.post(f"/admin/users/{users['ana']}/enable", data={"csrf_token": token})
    response = admin.post(f"/admin/users/{users['ana']}/reset-password", data={"csrf_token": token})
    match = SECRET_RE.search(response.get_data(as_text=True))
    assert match
    assert login(new_client(app), "ana", match.group(1)).status_code == 302


def test_non_global_manager_cannot_manage_users(
    app: Flask, fleet: Fleet, users: dict[str, int]
) -> None:
    from tests.web.conftest import make_user

    with app.app_context():
        make_user("local-admin", "administrator", customers=(fleet.customer_a,))
    client = new_client(app)
    login(client, "local-admin")
    assert client.get("/admin/users").status_code == 403
    assert client.get("/devices").status_code == 200


def test_token_lifecycle(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    eng = client_for("eng")
    page = eng.get("/admin/tokens").get_data(as_text=True)
    assert "Globex" not in page and "North Campus" in page
    response = eng.post(
        "/admin/tokens",
        data={
            "csrf_token": csrf_token(eng, "/admin/tokens"),
            "site": fleet.site_a1,
            "hours": 2,
            "note": "<b>room 4</b>",
        },
    )
    secret = SECRET_RE.search(response.get_data(as_text=True))
    assert secret and secret.group(1).startswith("olk_")
    listing = eng.get("/admin/tokens").get_data(as_text=True)
    assert secret.group(1) not in listing
    assert "active" in listing and ("1 h 59 min" in listing or "2 h 0 min" in listing)
    assert "&lt;b&gt;room 4&lt;/b&gt;" in listing
    with app.app_context():
        token_id = db.session.scalar(select(func.max(EnrollmentToken.id)))
    eng.post(
        f"/admin/tokens/{token_id}/revoke", data={"csrf_token": csrf_token(eng, "/admin/tokens")}
    )
    assert "revoked" in eng.get("/admin/tokens").get_data(as_text=True)


def test_revoke_device_in_db_then_relay(
    app: Flask, fleet: Fleet, relay_calls: RelayCalls, client_for: Callable[[str], FlaskClient]
) -> None:
    admin = client_for("root")
    response = admin.post(
        f"/devices/{fleet.device_a1}/revoke",
        data={"csrf_token": csrf_token(admin, f"/devices/{fleet.device_a1}"), "reason": "stolen"},
    )
    assert response.status_code == 302
    assert relay_calls.calls == [
        ("wss://relay.test/service", "revoke", {"device": fleet.device_a1})
    ]
    relay_calls.fail = True
    response = admin.post(
        f"/devices/{fleet.device_a2}/revoke",
        data={"csrf_token": csrf_token(admin, f"/devices/{fleet.device_a2}"), "reason": "lost"},
        follow_redirects=True,
    )
    assert "could not be reached" in response.get_data(as_text=True)
    with app.app_context():
        for device_id in (fleet.device_a1, fleet.device_a2):
            device = db.session.get(Device, device_id)
            assert device is not None and device.revoked_at is not None
        outcomes = [
            e.outcome
            for e in db.session.scalars(
                select(AuditEvent)
                .where(AuditEvent.kind == "relay.revoke_pushed")
                .order_by(AuditEvent.id)
            )
        ]
        assert outcomes == ["success", "failure"]
    assert "revoked" in admin.get(f"/devices/{fleet.device_a1}").get_data(as_text=True)


def test_init_is_idempotent_and_prints_credentials_once(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "portal.toml"
    config.write_text(f'[portal]\ndatabase_url = "{db_url}"\ndata_dir = "data"\n')
    runner = CliRunner()
    first = runner.invoke(outlink, ["init", "--config", str(config)])
    assert first.exit_code == 0, first.output
    assert "username: admin  password: " in first.output
    assert (tmp_path / "data" / "staff-ca" / "ca.pem").exists()
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "portal.key").st_mode) == 0o600
    second = runner.invoke(outlink, ["init", "--config", str(config)])
    assert second.exit_code == 0 and second.output == ""
    created = runner.invoke(
        outlink, ["create-admin", "--config", str(config), "--username", "second"]
    )
    assert created.exit_code == 0 and "password: " in created.output
    staff = runner.invoke(
        outlink,
        ["issue-staff-cert", "second", "--config", str(config), "--out", str(tmp_path / "certs")],
    )
    assert staff.exit_code == 0, staff.output
    assert (tmp_path / "certs" / "second.p12").exists()


def test_config_file_env_and_secret_key(tmp_path: Path) -> None:
    path = tmp_path / "portal.toml"
    path.write_text('[portal]\nbind = "127.0.0.1:9999"\nlogin_max_failures = 7\n')
    config = load_config(
        path,
        environ={"OUTLINK_PORTAL_LOGIN_MAX_FAILURES": "9", "OUTLINK_PORTAL_TRUST_PROXY": "yes"},
    )
    assert config.bind == "127.0.0.1:9999" and config.login_max_failures == 9
    assert config.trust_proxy is True and config.data_dir == tmp_path / "var/portal"
    path.write_text("[portal]\nbindd = 1\n")
    try:
        load_config(path, environ={})
    except ValueError as exc:
        assert "bindd" in str(exc)
    else:
        raise AssertionError("unknown key accepted")
    key = secret_key(tmp_path / "d")
    assert len(key) == 128 and secret_key(tmp_path / "d") == key
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "secret_key").st_mode) == 0o600


def test_the_first_administrator_must_replace_the_printed_password(
    app: Flask, fleet: Fleet
) -> None:
    """``init`` prints a generated password: it opens nothing but the change form, and
    once it is changed ``init`` reports that the printed one is no longer pending."""
    config = app.config["OUTLINK"]
    first = init_portal(config, out=lambda _line: None)
    password = first["admin_password"]
    assert password and first["admin_initial_pending"] is True
    client = new_client(app)
    assert login(client, "admin", password).headers["Location"] == "/account/password"
    for path in ("/devices", "/admin/users", "/audit"):
        response = client.get(path)
        assert response.status_code == 302 and response.headers["Location"].endswith(
            "/account/password"
        ), path
    new_password = "tulips under the north bridge"
    response = client.post(
        "/account/password",
        data={
            "csrf_token": csrf_token(client, "/account/password"),
            "current": password,
            "new": new_password,
            "confirm": new_password,
        },
    )
    assert response.status_code == 302
    assert client.get("/admin/users").status_code == 200
    again = init_portal(config, out=lambda _line: None)
    assert again["admin_password"] is None and again["admin_initial_pending"] is False
