"""Portal test fixtures: an app on a fresh database (SQLite, and PostgreSQL when configured),
a small fleet in two customers, one user per role, and logged-in test clients.

The app is the real one (``create_app``); only the relay RPC is replaced by a
recorder, since the portal must work whether or not a relay answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from pki.fleet import ensure_site
from store.models import Device, Presence, Site
from store.portal import Role, User, UserScope
from tests.pki_fixtures import db_url  # noqa: F401  (fresh migrated DB, SQLite + PostgreSQL)
from web import create_app
from web.db import db
from web.passwords import hash_password

PASSWORD = "correct horse battery"
CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
ORIGIN = "https://localhost/"


@dataclass
class RelayCalls:
    """Records what the portal asked the relay; ``fail`` makes it unreachable."""

    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, url: str, op: str, args: dict[str, Any], _config: Any) -> dict[str, Any]:
        self.calls.append((url, op, args))
        if self.fail:
            raise ConnectionRefusedError("relay down")
        return {"ok": True, "revoked": True, "closed": True}


@pytest.fixture
def relay_calls() -> RelayCalls:
    return RelayCalls()


@pytest.fixture
def app(db_url: str, tmp_path: Path, relay_calls: RelayCalls) -> Iterator[Flask]:  # noqa: F811
    app = create_app(
        {
            "database_url": db_url,
            "data_dir": tmp_path / "portal",
            "relay_url": "wss://relay.test/service",
            "TESTING": True,
            "OUTLINK_RELAY_RPC": relay_calls,
        }
    )
    yield app
    with app.app_context():
        db.engine.dispose()


@dataclass
class Fleet:
    """Two customers (a: acme, b: globex), two sites each, devices with presence."""

    customer_a: int = 0
    customer_b: int = 0
    site_a1: int = 0
    site_a2: int = 0
    site_b1: int = 0
    device_a1: str = ""
    device_a2: str = ""
    device_b1: str = ""
    devices: dict[str, str] = field(default_factory=dict)


def add_device(
    site: Site,
    hostname: str,
    *,
    online: bool = False,
    model: str = "CT-9000",
    agent_version: str = "1.0.0",
    now: datetime | None = None,
) -> str:
    """A device at ``site`` with a presence row (inside an app context; caller commits)."""
    import uuid

    now = now or datetime.now(UTC)
    device = Device(
        id=str(uuid.uuid4()),
        customer_id=site.customer_id,
        site_id=site.id,
        enrolled_at=now - timedelta(days=3),
        hostname=hostname,
        model=model,
    )
    db.session.add(device)
    db.session.flush()
    db.session.add(
        Presence(
            device_id=device.id,
            relay_id="relay-1",
            online=online,
            connected_at=now - timedelta(hours=1),
            last_seen=now,
            peer_addr="203.0.113.7",
            agent_version=agent_version,
        )
    )
    return device.id


@pytest.fixture
def fleet(app: Flask) -> Fleet:
    f = Fleet()
    with app.app_context():
        a1 = ensure_site(
            db.session, "acme", "north", customer_name="Acme Hospital", site_name="North Campus"
        )
        a2 = ensure_site(db.session, "acme", "south", site_name="South Clinic")
        b1 = ensure_site(
            db.session, "globex", "main", customer_name="Globex Imaging", site_name="Main Building"
        )
        f.customer_a, f.customer_b = a1.customer_id, b1.customer_id
        f.site_a1, f.site_a2, f.site_b1 = a1.id, a2.id, b1.id
        f.device_a1 = add_device(a1, "acme-ct-01", online=True)
        f.device_a2 = add_device(a2, "acme-mr-02")
        f.device_b1 = add_device(b1, "globex-xr-01", online=True)
        db.session.commit()
    return f


ROLE_USERS = {
    # username: (role, scope)
    "root": ("administrator", "all"),
    "eng": ("service_engineer", "customer_a"),
    "ana": ("analyst", "customer_a"),
    "contact": ("site_contact", "site_a1"),
}


def make_user(
    username: str,
    role: str,
    *,
    all_scope: bool = False,
    customers: tuple[int, ...] = (),
    sites: tuple[int, ...] = (),
    devices: tuple[str, ...] = (),
    password: str = PASSWORD,
    must_change: bool = False,
) -> int:
    """Create a user inside an app context (committed); return its id."""
    now = datetime.now(UTC)
    role_id = db.session.scalar(select(Role.id).where(Role.name == role))
    user = User(
        username=username,
        display_name=username.title(),
        password_hash=hash_password(password),
        role_id=role_id,
        all_scope=all_scope,
        is_active=True,
        must_change_password=must_change,
        created_at=now,
        password_changed_at=now,
    )
    user.scopes = (
        [UserScope(customer_id=c) for c in customers]
        + [UserScope(site_id=s) for s in sites]
        + [UserScope(device_id=d) for d in devices]
    )
    db.session.add(user)
    db.session.commit()
    return user.id


@pytest.fixture
def users(app: Flask, fleet: Fleet) -> dict[str, int]:
    """One user per role: root (admin, all), eng and ana (customer A), contact (site A1)."""
    ids = {}
    with app.app_context():
        for name, (role, scope) in ROLE_USERS.items():
            ids[name] = make_user(
                name,
                role,
                all_scope=scope == "all",
                customers=(fleet.customer_a,) if scope == "customer_a" else (),
                sites=(fleet.site_a1,) if scope == "site_a1" else (),
            )
    return ids


def new_client(app: Flask) -> FlaskClient:
    """A browser-like client: HTTPS (the app's preferred scheme) with a same-origin Referer."""
    client = app.test_client()
    client.environ_base["HTTP_REFERER"] = ORIGIN
    return client


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path)
    match = CSRF_RE.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path} ({page.status_code})"
    return match.group(1)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> Any:
    token = csrf_token(client)
    return client.post(
        "/login", data={"csrf_token": token, "username": username, "password": password}
    )


@pytest.fixture
def client_for(app: Flask, users: dict[str, int]) -> Callable[[str], FlaskClient]:
    """``client_for("eng")`` -> a client logged in as that user."""

    def make(username: str) -> FlaskClient:
        client = new_client(app)
        response = login(client, username)
        assert response.status_code == 302, response.get_data(as_text=True)[:500]
        return client

    return make
