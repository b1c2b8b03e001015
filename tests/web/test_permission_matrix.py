"""Every route, every role: the answers match the declared permission matrix.

The matrix below is the specification. A route missing from it fails the test
(so a new route cannot ship without a decision), and so does a view whose
declaration differs from it. Each route is then called as anonymous and as each
role, with real ids that are in the caller's scope, and the status is checked:
anonymous -> sign-in (302 to /login for pages, 401 for API and POSTs); a role
without the permission -> 403; a role with it -> neither 401 nor 403 nor 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from pki.tokens import create_token
from protocol.desktop import Mode
from store import desktop
from store.models import Site
from store.portal import AuditEvent, Permission, Role
from tests.web.conftest import CSRF_RE, Fleet, RelayCalls, make_user, new_client
from tests.web.matrix_alarms import ALARMS_MATRIX, ALARMS_URL_ARGS
from tests.web.matrix_consent import CONSENT_ANSWERERS, CONSENT_ROUTES, REQUESTER
from tests.web.matrix_telemetry import TELEMETRY_MATRIX
from web.authz import ACCESS_ATTR, Perm
from web.db import db

PUBLIC, AUTHENTICATED = "public", "authenticated"

#: endpoint -> who may call it. The one place a route's access is decided for the tests.
MATRIX: dict[str, str] = {
    "static": PUBLIC,
    "api.healthz": PUBLIC,
    "auth.login": PUBLIC,
    "auth.totp": PUBLIC,
    "auth.certificate": PUBLIC,
    "auth.logout": AUTHENTICATED,
    "auth.logout_everywhere": AUTHENTICATED,
    "auth.account": AUTHENTICATED,
    "auth.password": AUTHENTICATED,
    "auth.totp_setup": AUTHENTICATED,
    "auth.totp_disable": AUTHENTICATED,
    "auth.totp_recovery_codes": AUTHENTICATED,
    "api.whoami": AUTHENTICATED,
    "fleet.overview": Perm.DEVICE_VIEW,
    "fleet.customers": Perm.DEVICE_VIEW,
    "fleet.customer": Perm.DEVICE_VIEW,
    "fleet.site": Perm.DEVICE_VIEW,
    "fleet.devices": Perm.DEVICE_VIEW,
    "fleet.device": Perm.DEVICE_VIEW,
    "fleet.revoke": Perm.DEVICES_REVOKE,
    "api.presence": Perm.DEVICE_VIEW,
    "api.devices": Perm.DEVICE_VIEW,
    "api.device": Perm.DEVICE_VIEW,
    "admin.users": Perm.USERS_MANAGE,
    "admin.user_new": Perm.USERS_MANAGE,
    "admin.user_edit": Perm.USERS_MANAGE,
    "admin.user_disable": Perm.USERS_MANAGE,
    "admin.user_enable": Perm.USERS_MANAGE,
    "admin.user_reset_password": Perm.USERS_MANAGE,
    "admin.user_reset_second_factor": Perm.USERS_MANAGE,
    "admin.roles": Perm.USERS_MANAGE,
    "admin.tokens": Perm.DEVICES_ENROLL,
    "admin.token_revoke": Perm.DEVICES_ENROLL,
    "audit.search": Perm.AUDIT_READ,
    "audit.export_csv": Perm.AUDIT_READ,
    "audit.export_json": Perm.AUDIT_READ,
    "desktop.page": Perm.DESKTOP_VIEW,
    "desktop.request_session": Perm.DESKTOP_VIEW,
    "desktop.state": Perm.DESKTOP_VIEW,
    "desktop.ticket": Perm.DESKTOP_VIEW,
    "desktop.end": Perm.DESKTOP_VIEW,
    "desktop.consent": Perm.DESKTOP_CONSENT,
    "desktop.answer": Perm.DESKTOP_CONSENT,
    **TELEMETRY_MATRIX,
    **ALARMS_MATRIX,
}

#: The roles' permissions as specified (migrations 0002, 0004, 0005 must seed exactly this).
ROLE_PERMS: dict[str, set[str]] = {
    "administrator": set(Perm),
    "service_engineer": {
        Perm.DEVICE_VIEW,
        Perm.TELEMETRY_VIEW,
        Perm.FILES_VIEW,
        Perm.DESKTOP_VIEW,
        Perm.DESKTOP_CONTROL,
        Perm.DESKTOP_CLIPBOARD,
        Perm.DIAGNOSTICS_SHELL,
        Perm.UPDATES_PUSH,
        Perm.DEVICES_ENROLL,
        Perm.ALARMS_HANDLE,
    },
    "analyst": {Perm.DEVICE_VIEW, Perm.TELEMETRY_VIEW, Perm.FILES_VIEW, Perm.AUDIT_READ},
    "site_contact": {Perm.DEVICE_VIEW, Perm.TELEMETRY_VIEW, Perm.DESKTOP_CONSENT},
}
ROLE_OF = {
    "root": "administrator",
    "eng": "service_engineer",
    "ana": "analyst",
    "contact": "site_contact",
}


def test_every_route_has_a_matrix_entry_and_the_same_declaration(app: Flask) -> None:
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints - set(MATRIX) == set(), "routes without a permission-matrix entry"
    assert set(MATRIX) - endpoints == set(), "matrix entries without a route"
    for endpoint, expected in MATRIX.items():
        access = getattr(app.view_functions[endpoint], ACCESS_ATTR, None)
        assert access is not None, f"{endpoint} has no access declaration"
        assert access.label() == str(expected), endpoint


def test_roles_in_database_match_the_specification(app: Flask) -> None:
    with app.app_context():
        assert set(db.session.scalars(select(Permission.name))) == {p.value for p in Perm}
        roles = {r.name: {p.name for p in r.permissions} for r in db.session.scalars(select(Role))}
    assert roles == {name: {str(p) for p in perms} for name, perms in ROLE_PERMS.items()}


def test_undeclared_route_is_refused(app: Flask, client_for: Callable[[str], FlaskClient]) -> None:
    """Deny by default: a route without a declaration answers 403 even to an admin."""
    app.add_url_rule("/forgotten", "forgotten", lambda: "secret data")
    response = client_for("root").get("/forgotten")
    assert response.status_code == 403
    assert b"secret data" not in response.data


def url_args_for(app: Flask, fleet: Fleet, users: dict[str, int]) -> dict[str, Any]:
    with app.app_context():
        site = db.session.get(Site, fleet.site_a1)
        assert site is not None
        token = create_token(db.session, site, created_by="root")
        victim = make_user("victim", "analyst", customers=(fleet.customer_a,))
        db.session.commit()
    return {
        "device_id": fleet.device_a1,
        "customer_id": fleet.customer_a,
        "site_id": fleet.site_a1,
        "user_id": victim,
        "token_id": token.id,
        "filename": "portal.css",
        **ALARMS_URL_ARGS,
    }


def _allowed(role: str | None, rule: str) -> bool | None:
    """True/False for a permission check; None for public."""
    if rule == PUBLIC:
        return None
    if role is None:
        return False
    return rule == AUTHENTICATED or rule in ROLE_PERMS[role]


def login_as(app: Flask, username: str) -> FlaskClient:
    client = new_client(app)
    page = client.get("/login").get_data(as_text=True)
    token = CSRF_RE.search(page)
    assert token
    response = client.post(
        "/login",
        data={
            "csrf_token": token.group(1),
            "username": username,
            "password": "correct horse battery",
        },
    )
    assert response.status_code == 302
    return client


def post_token(client: FlaskClient) -> str:
    page = client.get("/account" if client.get_cookie("__Host-outlink-session") else "/login")
    match = CSRF_RE.search(page.get_data(as_text=True))
    if match is None:  # anonymous on /account is redirected: take the login form's token
        match = CSRF_RE.search(client.get("/login").get_data(as_text=True))
    assert match
    return match.group(1)


@pytest.mark.parametrize("username", [None, "root", "eng", "ana", "contact"])
def test_walk_every_route_as_every_role(
    app: Flask, fleet: Fleet, users: dict[str, int], username: str | None
) -> None:
    args = url_args_for(app, fleet, users)
    role = ROLE_OF.get(username or "")
    shared = login_as(app, username) if username else new_client(app)
    checked = 0
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        url_args = {name: args[name] for name in rule.arguments}
        with app.test_request_context():
            from flask import url_for

            url = url_for(rule.endpoint, **url_args)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            allowed = _allowed(role, MATRIX[rule.endpoint])
            if rule.endpoint in CONSENT_ROUTES and allowed:  # and the four-eyes rule
                allowed = CONSENT_ANSWERERS[username or ""].page == 200
            if method == "GET":
                response = shared.get(url)
            else:  # state-changing: a fresh session each time (logout must not end the walk)
                client = login_as(app, username) if username else new_client(app)
                response = client.post(url, data={"csrf_token": post_token(client)})
                if username:  # e.g. logout-everywhere ended every session of this user
                    shared = login_as(app, username)
            status = response.status_code
            response.close()
            where = f"{method} {url} as {username or 'anonymous'}: {status}"
            assert status < 500, where
            if allowed is None:
                continue
            if allowed:
                assert status not in (401, 403), where
                if method == "GET" and rule.endpoint not in ("auth.totp",):
                    assert status != 302 or "/login" not in response.headers["Location"], where
            elif role is None:
                if method == "GET" and not url.startswith("/api/"):
                    assert status == 302 and "/login" in response.headers["Location"], where
                else:
                    assert status == 401, where
            else:
                assert status == 403, where
            checked += 1
    assert checked >= len(MATRIX) - 5


def _prompting_request(app: Flask, fleet: Fleet, requester: int) -> str:
    """A desktop request on device A1 waiting for an answer the portal may give."""
    now = datetime.now(UTC)
    with app.app_context():
        row = desktop.create_session(
            db.session,
            device_id=fleet.device_a1,
            user_id=requester,
            username=REQUESTER,
            mode=Mode.CONTROL,
            reason="error 42",
            consent_timeout_s=desktop.CONSENT_TIMEOUT_DEFAULT,
            now=now,
        )
        desktop.record_prompting(
            db.session,
            row.id,
            consent_timeout_s=desktop.CONSENT_TIMEOUT_DEFAULT,
            remote_consent_allowed=True,
            now=now,
            actor=desktop.Actor(REQUESTER, requester),
        )
        db.session.commit()
        return row.id


def _last_answer_event(app: Flask) -> dict[str, Any] | None:
    with app.app_context():
        event = db.session.scalars(
            select(AuditEvent)
            .where(AuditEvent.kind.in_(("desktop.answered", "desktop.answer_refused")))
            .order_by(AuditEvent.id.desc())
        ).first()
        if event is None:
            return None
        return {"kind": event.kind, "actor": event.actor, **json.loads(event.details)}


@pytest.mark.parametrize("username", sorted(CONSENT_ANSWERERS))
def test_consent_routes_take_an_answer_only_from_a_second_person(
    app: Flask, fleet: Fleet, users: dict[str, int], relay_calls: RelayCalls, username: str
) -> None:
    """The requester, an administrator, an engineer and site contacts of other sites are
    refused; a site contact of the device's site who did not ask is heard, and the audit
    record names every answerer's real role."""
    who = CONSENT_ANSWERERS[username]
    assert MATRIX["desktop.consent"] == MATRIX["desktop.answer"] == Perm.DESKTOP_CONSENT
    if username not in users:
        with app.app_context():
            reach: Any = getattr(fleet, who.scope, None)
            make_user(
                username,
                who.role,
                all_scope=who.scope == "all",
                customers=(reach,) if who.scope.startswith("customer") else (),
                sites=(reach,) if who.scope.startswith("site") else (),
                devices=(reach,) if who.scope.startswith("device") else (),
            )
    sid = _prompting_request(app, fleet, users[REQUESTER])
    client = login_as(app, username)
    page = client.get(f"/devices/{fleet.device_a1}/desktop/consent")
    assert page.status_code == who.page
    assert (sid in page.get_data(as_text=True)) is (who.page == 200)
    calls = len(relay_calls.calls)
    response = client.post(
        f"/devices/{fleet.device_a1}/desktop/consent",
        data={"csrf_token": post_token(client), "session": sid, "decision": "accept"},
    )
    assert response.status_code == who.answer
    event = _last_answer_event(app)
    if who.answer != 302:
        assert len(relay_calls.calls) == calls, "a refused answer reached the device"
        if who.refusal is None:  # refused before the rule (permission, scope): no answer
            assert event is None
        else:
            assert event is not None
            assert (event["kind"], event["actor"]) == ("desktop.answer_refused", username)
            assert (event["role"], event["refusal"]) == (who.role, who.refusal)
            assert (event["session_id"], event["decision"]) == (sid, "accept")
        return
    [(_, op, args)] = relay_calls.calls[calls:]
    assert (op, args["instruction"]["action"]) == ("instruct", "desktop.answer")
    assert args["instruction"]["by"]["user"] == username
    assert event is not None
    assert (event["kind"], event["actor"], event["role"]) == (
        "desktop.answered",
        username,
        "site_contact",
    )
