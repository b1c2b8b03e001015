"""Log files from the portal (R12) against a real relay and a real agent: the engineer's
request travels portal -> relay ``/service`` (mutual TLS) -> agent, the upload arrives,
and the download is byte- and hash-identical; a file outside the configured ones is
refused by the agent, marked and audited; an offline device is a clear message. Then the
download's guards without a relay: scope, tampered files, paths outside ``upload_dir``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from agent.audit import read_entries
from relay_server.config import ListenConfig
from relay_server.server import Relay
from relay_server.telemetry.service import TelemetryService
from store.db import make_engine
from store.portal import AuditEvent
from store.telemetry.uploads import UPLOAD_COMPLETE, TelemetryLogUpload, request_log_upload
from tests.conftest import UNIT
from tests.pki_fixtures import FleetPKI
from tests.relay.conftest import relay_config
from tests.telemetry.conftest import HookSink, SmtpSink, World, free_port, server_config
from tests.web.conftest import Fleet, RelayCalls, csrf_token, login, make_user, new_client
from web import create_app
from web.db import db

T = 10 * UNIT
LOG_LINE = (
    "2026-11-27 10:00:0{n}.000 ERROR [gantry] E4012 patient=DOE^JANE PID=99{n} from 10.2.0.{n}\n"
)


# -- a real relay with telemetry, a real agent, the portal talking to the relay ---------------


@pytest.fixture
async def world(fleet_pki: FleetPKI, tmp_path: Path, db_url: str) -> AsyncIterator[World]:
    """The relay on a known port, so that the ``service_url`` it registers is the one the
    portal calls (the portal finds a device's relay through the presence table)."""
    engine = make_engine(db_url)
    port = free_port()
    config = relay_config(
        fleet_pki,
        db_url,
        listen=ListenConfig(port=port, handshake_timeout=5 * UNIT),
        service_url=f"wss://127.0.0.1:{port}/service",
    )
    with SmtpSink() as smtp, HookSink() as hooks:
        relay = Relay(config, engine=engine, ca=fleet_pki.ca)
        service = TelemetryService.for_relay(relay.host, server_config(tmp_path, smtp, hooks))
        relay.add_feature(service)
        await relay.start()
        w = World(fleet_pki, engine, relay, service, tmp_path, smtp, hooks)
        try:
            yield w
        finally:
            for agent in w.agents:
                await agent.stop()
            await relay.stop()
            await asyncio.get_running_loop().shutdown_default_executor()
            engine.dispose()


@pytest.fixture
def portal(world: World, fleet_pki: FleetPKI, db_url: str, tmp_path: Path) -> Iterator[Flask]:
    """The real portal app on the relay's database, with the relay's upload directory."""
    app = create_app(
        {
            "database_url": db_url,
            "data_dir": tmp_path / "portal",
            "relay_url": "",
            "relay_ca": fleet_pki.ca_file,
            "relay_cert": fleet_pki.portal.cert_file,
            "relay_key": fleet_pki.portal.key_file,
            "relay_timeout": T,
            "upload_dir": world.service.config.upload_dir,
            "TESTING": True,
        }
    )
    yield app
    with app.app_context():
        db.engine.dispose()


def engineer(app: Flask, username: str = "eng") -> FlaskClient:
    with app.app_context():
        make_user(username, "service_engineer", all_scope=True)
    client = new_client(app)
    assert login(client, username).status_code == 302
    return client


def equipment_logs(tmp_path: Path) -> Path:
    directory = tmp_path / "equipment-logs"
    directory.mkdir()
    (directory / "app.log").write_text("".join(LOG_LINE.format(n=n) for n in range(3)))
    (directory / "app.log.1").write_text("2026-11-26 23:59:59.000 INFO rotated\n")
    return directory


async def ask(client: FlaskClient, device_id: str, **form: str) -> str:
    """The engineer presses "Fetch logs" (a blocking request: the portal calls the relay,
    which runs on this event loop, so the browser side runs in a thread)."""

    def post() -> str:
        page = f"/devices/{device_id}/logs"
        token = csrf_token(client, page)
        response = client.post(page, data={"csrf_token": token, **form}, follow_redirects=True)
        assert response.status_code == 200
        return response.get_data(as_text=True)

    return await asyncio.to_thread(post)


def audit(world: World, prefix: str = "telemetry.logs_") -> list[tuple[str, str, dict[str, Any]]]:
    def query(session: Any) -> list[tuple[str, str, dict[str, Any]]]:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.kind.like(prefix + "%")).order_by(AuditEvent.id)
        )
        return [(e.kind, e.outcome, json.loads(e.details or "{}")) for e in rows]

    return world.db(query)


async def test_the_engineer_fetches_logs_and_downloads_them_hash_identical(
    world: World, portal: Flask, tmp_path: Path
) -> None:
    agent = await world.agent(
        telemetry={"uploads": [{"name": "app", "path": str(equipment_logs(tmp_path) / "app.log*")}]}
    )
    eng = engineer(portal)
    page = await ask(eng, agent.device_id, source="app")
    assert "The device is sending 2 log file(s)" in page
    done = await world.until(
        lambda s: s.scalars(
            select(TelemetryLogUpload).where(
                TelemetryLogUpload.device_id == agent.device_id,
                TelemetryLogUpload.state == UPLOAD_COMPLETE,
            )
        ).first(),
        "upload complete",
    )
    assert done.requested_by == "eng" and done.reason == "request" and done.source == "app"

    listing = eng.get(f"/devices/{agent.device_id}/logs").get_data(as_text=True)
    link = f"/devices/{agent.device_id}/logs/{done.id}"
    assert f'href="{link}"' in listing and "SHA-256 verified" in listing
    response = eng.get(link)
    assert response.status_code == 200 and response.mimetype == "application/gzip"
    disposition = response.headers["Content-Disposition"]
    assert re.fullmatch(
        r"attachment; filename=[0-9a-f-]{36}-app-\d{8}-\d{6}\.tar\.gz", disposition.replace('"', "")
    ), disposition
    body = response.get_data()
    response.close()  # send_file's file
    stored = Path(world.service.config.upload_dir) / str(done.stored_name)
    assert body == stored.read_bytes()
    assert hashlib.sha256(body).hexdigest() == done.sha256 and len(body) == done.size
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        names = sorted(m.name for m in tar.getmembers())
        text = tar.extractfile("app.log").read().decode()  # type: ignore[union-attr]
    assert names == ["app.log", "app.log.1"]
    assert "E4012" in text and "DOE" not in text and "10.2.0." not in text  # scrubbed (R28)
    kinds = [(kind, outcome) for kind, outcome, _ in audit(world)]
    assert kinds == [("telemetry.logs_request", "success"), ("telemetry.logs_download", "success")]
    assert audit(world)[1][2]["sha256"] == done.sha256


async def test_a_file_outside_the_configured_ones_is_refused_and_audited(
    world: World, portal: Flask, tmp_path: Path
) -> None:
    directory = equipment_logs(tmp_path)
    (tmp_path / "secret.txt").write_text("not a log\n")
    agent = await world.agent(
        telemetry={
            "uploads": [
                {"name": "app", "path": str(directory / "app.log*")},
                {"name": "sys", "path": str(directory / "sys.log")},
            ]
        }
    )
    eng = engineer(portal)
    for path in ("/etc/passwd", f"{directory}/../secret.txt"):
        page = await ask(eng, agent.device_id, path=path)
        assert (
            "The device refused: that file is not one of the device&#39;s configured log files."
        ) in page
    page = await ask(eng, agent.device_id, source="nosuch")
    assert "The device refused: the device has no log set of that name." in page
    page = await ask(eng, agent.device_id, source="")
    assert "The device refused: the device has several log sets (or none): name one." in page
    rows = world.db(
        lambda s: [
            (u.state, u.error)
            for u in s.scalars(select(TelemetryLogUpload).order_by(TelemetryLogUpload.created_at))
        ]
    )
    assert rows == [("refused", "forbidden_path")] * 2 + [("refused", "unknown_source")] * 2
    refusals = [
        (k, o, d.get("path"), d.get("error"))
        for k, o, d in audit(world)
        if k == "telemetry.logs_refused"
    ]
    assert refusals == [
        ("telemetry.logs_refused", "failure", "/etc/passwd", "forbidden_path"),
        ("telemetry.logs_refused", "failure", f"{directory}/../secret.txt", "forbidden_path"),
        ("telemetry.logs_refused", "failure", None, "unknown_source"),
        ("telemetry.logs_refused", "failure", None, "unknown_source"),
    ]
    entries = [e for _, e, _ in read_entries(agent.data_dir / "audit.log") if e]
    device_side = [
        e["detail"].get("path")
        for e in entries
        if e["kind"] == "upload" and e["outcome"] == "refused"
    ]
    assert device_side[:2] == ["/etc/passwd", f"{directory}/../secret.txt"]  # the agent's own log
    assert not list(Path(world.service.config.upload_dir).rglob("*.tar.gz"))


async def test_an_offline_device_is_a_clear_message_and_a_failed_upload(
    world: World, portal: Flask
) -> None:
    device_id = world.device().identity.device_id  # type: ignore[union-attr]
    eng = engineer(portal)
    page = await ask(eng, device_id, source="app")
    assert "Logs not requested: the device is offline" in page
    assert world.db(
        lambda s: [(u.state, u.error) for u in s.scalars(select(TelemetryLogUpload))]
    ) == [("failed", "offline")]
    assert [(k, o) for k, o, _ in audit(world)] == [
        ("telemetry.logs_request", "success"),
        ("telemetry.logs_failed", "failure"),
    ]


# -- the download's guards (no relay needed) ------------------------------------------------


@pytest.fixture
def files_app(db_url: str, tmp_path: Path, relay_calls: RelayCalls) -> Iterator[Flask]:
    app = create_app(
        {
            "database_url": db_url,
            "data_dir": tmp_path / "portal",
            "relay_url": "wss://r.test/s",
            "upload_dir": tmp_path / "uploads",
            "TESTING": True,
            "OUTLINK_RELAY_RPC": relay_calls,
        }
    )
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def app(files_app: Flask) -> Flask:
    """The conftest's fleet and users on the app with an upload directory."""
    return files_app


def fetch(client: FlaskClient, url: str) -> tuple[int, bytes]:
    """GET ``url``; its status and body, the response closed (send_file holds a file)."""
    response = client.get(url)
    try:
        return response.status_code, response.get_data()
    finally:
        response.close()


def complete_upload(
    app: Flask,
    device_id: str,
    tmp_path: Path,
    content: bytes = b"logs",
    stored_name: str | None = None,
) -> TelemetryLogUpload:
    with app.app_context():
        upload, _ = request_log_upload(
            db.session, device_id=device_id, source="app", requested_by="eng"
        )
        name = stored_name or f"{device_id}/{upload.id}.tar.gz"
        target = tmp_path / "uploads" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        upload.state, upload.stored_name = UPLOAD_COMPLETE, name
        upload.size, upload.sha256 = len(content), hashlib.sha256(content).hexdigest()
        db.session.commit()
        db.session.expunge(upload)
        return upload


def test_downloads_are_scoped_verified_and_confined_to_the_upload_dir(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient], tmp_path: Path
) -> None:
    ok = complete_upload(app, fleet.device_a1, tmp_path)
    foreign = complete_upload(app, fleet.device_b1, tmp_path)
    eng, ana, contact = client_for("eng"), client_for("ana"), client_for("contact")
    assert fetch(eng, f"/devices/{fleet.device_a1}/logs/{ok.id}") == (200, b"logs")
    assert fetch(ana, f"/devices/{fleet.device_a1}/logs/{ok.id}") == (200, b"logs")  # files.view
    assert contact.get(f"/devices/{fleet.device_a1}/logs/{ok.id}").status_code == 403
    assert eng.get(f"/devices/{fleet.device_b1}/logs/{foreign.id}").status_code == 404  # scope
    assert eng.get(f"/devices/{fleet.device_a1}/logs/{foreign.id}").status_code == 404  # not its
    assert eng.get(f"/devices/{fleet.device_a1}/logs/{'x' * 400}").status_code == 404

    tampered = complete_upload(app, fleet.device_a1, tmp_path)
    (tmp_path / "uploads" / str(tampered.stored_name)).write_bytes(b"LOGS")  # same size
    response = eng.get(f"/devices/{fleet.device_a1}/logs/{tampered.id}", follow_redirects=True)
    assert "no longer matches its SHA-256: it is not served" in response.get_data(as_text=True)

    (tmp_path / "outside.tar.gz").write_bytes(b"secret")
    escaping = complete_upload(
        app, fleet.device_a1, tmp_path, content=b"secret", stored_name="../outside.tar.gz"
    )
    response = eng.get(f"/devices/{fleet.device_a1}/logs/{escaping.id}", follow_redirects=True)
    assert response.get_data() != b"secret"
    assert "not available on this portal" in response.get_data(as_text=True)
    with app.app_context():
        outcomes = [
            (e.outcome, json.loads(e.details or "{}")["upload_id"])
            for e in db.session.scalars(
                select(AuditEvent)
                .where(AuditEvent.kind == "telemetry.logs_download")
                .order_by(AuditEvent.id)
            )
        ]
    assert outcomes == [("success", ok.id), ("success", ok.id), ("failure", tampered.id)]

    app.config["OUTLINK"].upload_dir = None  # a portal that does not share the relay's disk
    listing = eng.get(f"/devices/{fleet.device_a1}/logs").get_data(as_text=True)
    assert "no <code>upload_dir</code> configured" in listing and "Download</a>" not in listing
    response = eng.get(f"/devices/{fleet.device_a1}/logs/{ok.id}", follow_redirects=True)
    assert "not available on this portal" in response.get_data(as_text=True)


def test_an_unreachable_relay_marks_the_request_failed(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient], relay_calls: RelayCalls
) -> None:
    relay_calls.fail = True
    eng = client_for("eng")
    page = f"/devices/{fleet.device_a1}/logs"
    response = eng.post(
        page, data={"csrf_token": csrf_token(eng, page), "source": "app"}, follow_redirects=True
    )
    assert "Logs not requested: its relay cannot be reached." in response.get_data(as_text=True)
    assert relay_calls.calls[0][1] == "instruct"
    assert relay_calls.calls[0][2]["instruction"]["action"] == "upload_logs"
    with app.app_context():
        assert [(u.state, u.error) for u in db.session.scalars(select(TelemetryLogUpload))] == [
            ("failed", "unreachable")
        ]
    both = eng.post(
        page,
        data={"csrf_token": csrf_token(eng, page), "source": "app", "path": "/var/log/app.log"},
        follow_redirects=True,
    )
    assert "name a log set or a file, not both" in both.get_data(as_text=True)
    bad = eng.post(
        page, data={"csrf_token": csrf_token(eng, page), "source": "../etc"}, follow_redirects=True
    )
    assert "A configured name like app" in bad.get_data(as_text=True)
    assert len(relay_calls.calls) == 1
