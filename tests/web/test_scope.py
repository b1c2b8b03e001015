"""Scoping: an engineer of customer A gets 404 -- never data -- for anything of customer B,
whichever way the id reaches the server (path, query string, search, API, export)."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from flask import Flask
from flask.testing import FlaskClient

from pki.tokens import create_token
from store.models import Site
from store.portal import append_audit
from tests.web.conftest import Fleet, csrf_token
from web.db import db

B_MARKERS = ("globex", "Globex", "Main Building")


def _no_b(text: str, fleet: Fleet, path: str = "") -> None:
    """No trace of customer B, except the caller's own query echoed back into the form."""
    for values in parse_qs(urlsplit(path).query).values():
        for value in values:
            text = text.replace(value, "")
    for marker in (*B_MARKERS, fleet.device_b1):
        assert marker not in text, marker


def test_paths_of_customer_b_are_404(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    eng = client_for("eng")
    for path in (
        f"/devices/{fleet.device_b1}",
        f"/customers/{fleet.customer_b}",
        f"/sites/{fleet.site_b1}",
        f"/api/v1/devices/{fleet.device_b1}",
        "/devices/" + "x" * 500,
        "/customers/999999",
    ):
        response = eng.get(path)
        assert response.status_code == 404, path
        _no_b(response.get_data(as_text=True), fleet, path)
    # ...and their own customer works
    assert eng.get(f"/devices/{fleet.device_a1}").status_code == 200
    assert eng.get(f"/customers/{fleet.customer_a}").status_code == 200


def test_query_string_search_and_api_lists_never_show_b(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    eng = client_for("eng")
    b, b1, a1 = fleet.customer_b, fleet.device_b1, fleet.device_a1
    for path in (
        f"/devices?customer={b}",
        f"/devices?site={fleet.site_b1}",
        "/devices?q=globex",
        f"/devices?q={b1[:8]}",
        "/devices",
        "/customers",
        "/customers?q=glob",
        "/",
        f"/api/v1/devices?customer={b}",
        "/api/v1/devices?q=globex",
        f"/api/v1/presence?ids={b1},{a1}",
        "/admin/tokens",
    ):
        response = eng.get(path)
        assert response.status_code == 200, path
        _no_b(response.get_data(as_text=True), fleet, path)
    presence = eng.get(f"/api/v1/presence?ids={fleet.device_b1},{fleet.device_a1}").get_json()
    assert set(presence) == {fleet.device_a1}
    assert "acme-ct-01" in eng.get("/devices?q=acme-ct").get_data(as_text=True)


def test_site_contact_sees_only_their_site(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    contact = client_for("contact")
    listing = contact.get("/devices").get_data(as_text=True)
    assert "acme-ct-01" in listing and "acme-mr-02" not in listing
    assert contact.get(f"/devices/{fleet.device_a2}").status_code == 404
    assert contact.get(f"/sites/{fleet.site_a2}").status_code == 404
    assert contact.get(f"/customers/{fleet.customer_a}").status_code == 200  # name only


def test_tokens_of_b_cannot_be_made_listed_or_revoked(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    with app.app_context():
        site_b = db.session.get(Site, fleet.site_b1)
        assert site_b is not None
        token_b = create_token(db.session, site_b, created_by="root")
        db.session.commit()
    eng = client_for("eng")
    token = csrf_token(eng, "/admin/tokens")
    response = eng.post(
        "/admin/tokens", data={"csrf_token": token, "site": fleet.site_b1, "hours": 1}
    )
    assert response.status_code == 404
    response = eng.post(f"/admin/tokens/{token_b.id}/revoke", data={"csrf_token": token})
    assert response.status_code == 404
    response = eng.post(
        "/admin/tokens", data={"csrf_token": token, "site": fleet.site_a1, "hours": 2}
    )
    assert response.status_code == 200 and "olk_" in response.get_data(as_text=True)


def test_audit_search_and_exports_are_scoped(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    with app.app_context():
        append_audit(
            db.session,
            "relay.handshake_refused",
            outcome="failure",
            actor="relay:r1",
            device_id=fleet.device_b1,
            summary="globex device refused",
        )
        append_audit(
            db.session,
            "relay.handshake_refused",
            outcome="failure",
            actor="relay:r1",
            device_id=fleet.device_a1,
            summary="acme device refused",
        )
        db.session.commit()
    ana = client_for("ana")  # analyst, customer A only
    b, b1 = fleet.customer_b, fleet.device_b1
    for path in (
        "/audit",
        f"/audit?customer={b}",
        f"/audit?device={b1}",
        "/audit?kind=relay.*",
        "/audit/export.csv",
        f"/audit/export.csv?customer={b}",
        "/audit/export.json",
        f"/audit/export.json?device={b1}",
    ):
        response = ana.get(path)
        assert response.status_code == 200, path
        _no_b(response.get_data(as_text=True), fleet, path)
    events = json.loads(ana.get("/audit/export.json").get_data(as_text=True))
    relay_events = {e["summary"] for e in events if e["kind"].startswith("relay.")}
    assert relay_events == {"acme device refused"}
    assert all(e["customer_id"] == fleet.customer_a for e in events)  # no sign-ins of others
