"""Enrolment end to end: the real agent client against ``serve_enrollment`` over real TLS."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, select
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent.enroll import AlreadyEnrolledError, EnrollmentError, RelayCertificateError, enroll
from agent.identity import load_identity
from pki.fleet import ensure_site
from pki.identity import identity_from_peercert
from pki.keys import load_private_key
from pki.tokens import create_token
from pki.wire import ENROLL_SUBPROTOCOL
from relay_server.enrollment import EnrollmentService, serve_enrollment
from store.db import session_scope
from store.models import Device, EnrollmentToken
from tests.agent.helpers import tinyproxy
from tests.conftest import UNIT
from tests.pki_fixtures import CertFiles, FleetPKI

TUNNEL_SUBPROTOCOL = "outlink.tunnel.v1"
ROOT = Path(__file__).resolve().parents[2]


class RecordingService(EnrollmentService):
    """Records every request that reached the enrolment core."""

    def __init__(self, engine: Engine, fleet_pki: FleetPKI) -> None:
        super().__init__(engine, fleet_pki.ca)
        self.received: list[bytes] = []

    def handle(self, request_bytes: bytes, peer_addr: str, now: datetime | None = None) -> bytes:
        self.received.append(request_bytes)
        return super().handle(request_bytes, peer_addr, now)


@dataclass
class Relay:
    """A minimal relay: ``/enroll`` plus ``/whoami`` (echoes the client cert identity)."""

    port: int
    service: RecordingService
    requests: list[Request]

    def url(self, host: str = "localhost", path: str = "/enroll") -> str:
        return f"wss://{host}:{self.port}{path}"


@asynccontextmanager
async def running_relay(
    engine: Engine, fleet_pki: FleetPKI, server: CertFiles | None = None, read_timeout: float = 10
) -> AsyncIterator[Relay]:
    service = RecordingService(engine, fleet_pki)
    requests: list[Request] = []

    def record(_ws: ServerConnection, request: Request) -> Response | None:
        requests.append(request)
        return None

    async def handler(ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path == "/whoami":
            peer = ws.transport.get_extra_info("peercert")
            await ws.send(json.dumps(repr(identity_from_peercert(peer))))
            return
        await serve_enrollment(ws, service, read_timeout=read_timeout)

    async with serve(
        handler,
        "127.0.0.1",
        0,
        ssl=fleet_pki.server_context(server),
        # Like the relay: one port, several subprotocols; /enroll must check its own.
        subprotocols=[ENROLL_SUBPROTOCOL, TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
        process_request=record,
    ) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        yield Relay(port, service, requests)


def new_token(engine: Engine, customer: str = "acme", site: str = "lab") -> str:
    with session_scope(engine) as session:
        return create_token(session, ensure_site(session, customer, site)).secret


async def test_enrolment_over_tls(db_engine: Engine, fleet_pki: FleetPKI, tmp_path: Path) -> None:
    token = new_token(db_engine, "acme", "radiology")
    out = tmp_path / "identity"
    async with running_relay(db_engine, fleet_pki) as relay:
        identity = await enroll(
            relay.url(), fleet_pki.ca_file, token, out, hostname="ct-01", model="X9"
        )
        assert (identity.customer, identity.site) == ("acme", "radiology")

        # The key file is 0600 and its content never reached the server.
        key_file = out / "device.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(out.stat().st_mode) == 0o700
        key = load_private_key(key_file)
        secrets = [
            key_file.read_bytes(),
            key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ]
        sent = b"".join(relay.service.received) + b"".join(
            str(r.headers).encode() + r.path.encode() for r in relay.requests
        )
        assert relay.service.received, "the request reached the server"
        for secret in secrets:
            assert secret not in sent
        assert b"PRIVATE KEY" not in sent

        # The enrolled credentials authenticate as that device on the same port.
        agent = load_identity(out)
        assert agent.identity == identity
        async with connect(
            relay.url(path="/whoami"),
            ssl=agent.ssl_context(),
            proxy=None,
            subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
        ) as ws:
            assert json.loads(str(await ws.recv())) == repr(identity)

    with session_scope(db_engine) as session:
        device = session.get_one(Device, identity.device_id)
        assert (device.hostname, device.model) == ("ct-01", "X9")
        used = session.scalars(select(EnrollmentToken)).one()
        assert used.used_by_device_id == identity.device_id


async def test_token_works_only_once_over_tls(
    db_engine: Engine, fleet_pki: FleetPKI, tmp_path: Path
) -> None:
    token = new_token(db_engine)
    async with running_relay(db_engine, fleet_pki) as relay:
        await enroll(relay.url(), fleet_pki.ca_file, token, tmp_path / "a")
        with pytest.raises(EnrollmentError) as info:
            await enroll(relay.url(), fleet_pki.ca_file, token, tmp_path / "b")
    assert info.value.code == "invalid_token"
    assert not (tmp_path / "b" / "device.pem").exists()


@pytest.mark.parametrize("which", ["foreign_ca", "wrong_hostname"])
async def test_agent_refuses_untrusted_endpoint_and_sends_nothing(
    which: str, db_engine: Engine, fleet_pki: FleetPKI, tmp_path: Path
) -> None:
    server = (
        fleet_pki.server_cert(foreign=True)
        if which == "foreign_ca"
        else fleet_pki.server_cert(dns=("relay.invalid",), ips=())
    )
    token = new_token(db_engine)
    async with running_relay(db_engine, fleet_pki, server) as relay:
        with pytest.raises(RelayCertificateError):
            await enroll(relay.url(), fleet_pki.ca_file, token, tmp_path / "id")
        # The handshake failed on our side: not even the HTTP upgrade request was sent.
        assert relay.requests == []
        assert relay.service.received == []
    assert not (tmp_path / "id" / "device.pem").exists()
    # The key was made and stored (0600) before the connection was attempted.
    assert stat.S_IMODE((tmp_path / "id" / "device.key").stat().st_mode) == 0o600
    with session_scope(db_engine) as session:
        assert session.scalars(select(EnrollmentToken.used_at)).one() is None


async def test_refuses_ip_url_when_cert_names_only_dns(
    db_engine: Engine, fleet_pki: FleetPKI, tmp_path: Path
) -> None:
    server = fleet_pki.server_cert(dns=("localhost",), ips=())
    async with running_relay(db_engine, fleet_pki, server) as relay:
        with pytest.raises(RelayCertificateError):
            await enroll(relay.url("127.0.0.1"), fleet_pki.ca_file, "olk_x", tmp_path / "id")
        assert relay.requests == []


async def test_refuses_plain_ws_url(fleet_pki: FleetPKI, tmp_path: Path) -> None:
    with pytest.raises(EnrollmentError):
        await enroll("ws://localhost:1/enroll", fleet_pki.ca_file, "olk_x", tmp_path / "id")
    assert not (tmp_path / "id").exists()


async def test_already_enrolled_is_refused_without_force(
    db_engine: Engine, fleet_pki: FleetPKI, tmp_path: Path
) -> None:
    async with running_relay(db_engine, fleet_pki) as relay:
        first = await enroll(relay.url(), fleet_pki.ca_file, new_token(db_engine), tmp_path)
        with pytest.raises(AlreadyEnrolledError):
            await enroll(relay.url(), fleet_pki.ca_file, new_token(db_engine), tmp_path)
        second = await enroll(
            relay.url(), fleet_pki.ca_file, new_token(db_engine), tmp_path, force=True
        )
    assert second.device_id != first.device_id
    assert load_identity(tmp_path).identity == second


async def test_silent_client_gets_invalid_request(db_engine: Engine, fleet_pki: FleetPKI) -> None:
    async with (
        running_relay(db_engine, fleet_pki, read_timeout=0.2 * UNIT) as relay,
        connect(
            relay.url(),
            ssl=fleet_pki.client_context(),
            subprotocols=[ENROLL_SUBPROTOCOL],  # type: ignore[list-item]
            proxy=None,
        ) as ws,
    ):
        async with asyncio.timeout(5 * UNIT):
            answer = json.loads(await ws.recv())
    assert answer == {"ok": False, "error": "invalid_request", "message": answer["message"]}


async def test_wrong_subprotocol_is_closed(db_engine: Engine, fleet_pki: FleetPKI) -> None:
    async with (
        running_relay(db_engine, fleet_pki) as relay,
        connect(
            relay.url(),
            ssl=fleet_pki.client_context(),
            proxy=None,
            subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
        ) as ws,
    ):
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(5 * UNIT):
                await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008


def test_agent_side_does_not_load_the_database_stack() -> None:
    """The device runs enrolment and renewal without SQLAlchemy/Alembic (R32: stay light)."""
    code = (
        "import sys, agent.enroll, agent.identity, pki.renewal; "
        "print(sorted(m for m in ('sqlalchemy', 'alembic', 'store') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "[]"


async def test_enrolment_through_an_authenticating_http_proxy(
    db_engine: Engine, fleet_pki: FleetPKI, tmp_path: Path
) -> None:
    token = new_token(db_engine)
    with tinyproxy(tmp_path) as proxy:
        async with running_relay(db_engine, fleet_pki) as relay:
            with pytest.raises(EnrollmentError) as info:
                await enroll(
                    relay.url(),
                    fleet_pki.ca_file,
                    token,
                    tmp_path / "a",
                    proxy=proxy.url(password="wrong"),
                )
            assert "wrong" not in str(info.value)
            assert relay.requests == []
            identity = await enroll(
                relay.url(), fleet_pki.ca_file, token, tmp_path / "b", proxy=proxy.url()
            )
        assert proxy.connects() >= 1
    assert load_identity(tmp_path / "b").identity == identity
