"""Who may connect where: certificates, identities, revocation, subprotocols, paths."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from websockets.exceptions import InvalidMessage, InvalidStatus

from pki.fleet import ensure_site
from pki.keys import generate_key
from pki.renewal import build_csr
from pki.revocation import revoke_device
from pki.tokens import create_token
from pki.wire import ENROLL_SUBPROTOCOL, decode_response, encode_request
from relay_server.config import ListenConfig
from store.db import session_scope
from tests.conftest import UNIT
from tests.pki_fixtures import FleetPKI
from tests.relay.conftest import Fleet, device_id_of, running_relay
from tunnel import ErrorCode


async def test_device_connects_and_registers(fleet: Fleet) -> None:
    cert = fleet.device()
    device_id = device_id_of(cert)
    tunnel = await fleet.agent(cert)
    await fleet.wait_registered(device_id)
    link = fleet.relay.registry.agents[device_id]
    assert link.identity == cert.identity
    await tunnel.close()
    await fleet.wait_registered(device_id, present=False)
    assert fleet.relay.stats.handshakes[("agent", "ok")] == 1


async def expect_status(fleet: Fleet, path: str, cert: object, status: int, **kw: object) -> None:
    with pytest.raises(InvalidStatus) as info:
        await fleet.ws(path, cert, **kw)  # type: ignore[arg-type]
    assert info.value.response.status_code == status


async def test_missing_client_cert_is_401(fleet: Fleet) -> None:
    await expect_status(fleet, "/agent", None, 401)
    await expect_status(fleet, "/service", None, 401)
    assert fleet.relay.stats.handshakes[("agent", "no_cert")] == 1


async def test_device_cert_on_service_and_service_cert_on_agent_are_403(fleet: Fleet) -> None:
    await expect_status(fleet, "/service", fleet.device(), 403)
    await expect_status(fleet, "/agent", fleet.pki.portal, 403)
    assert fleet.relay.stats.handshakes[("service", "wrong_identity")] == 1
    assert fleet.relay.stats.handshakes[("agent", "wrong_identity")] == 1


@pytest.mark.parametrize(
    "kind",
    ["foreign", "expired", "not_yet_valid"],
)
async def test_bad_certificates_fail_the_tls_handshake(fleet: Fleet, kind: str) -> None:
    now = datetime.now(UTC)
    options: dict[str, object] = {
        "foreign": {"foreign": True},
        "expired": {"not_before": now - timedelta(days=10), "lifetime": timedelta(days=1)},
        "not_yet_valid": {"not_before": now + timedelta(days=1)},
    }[kind]  # type: ignore[assignment]
    cert = fleet.device(**options)  # type: ignore[arg-type]
    # The client sees the server's TLS alert in the handshake (TLS 1.2) or as a lost
    # connection instead of an HTTP response (TLS 1.3 sends the client's certificate
    # after its Finished): either way no HTTP request reached the relay.
    with pytest.raises((ssl.SSLError, OSError, InvalidMessage)):
        await fleet.ws("/agent", cert)
    assert fleet.relay.stats.handshakes.total() == 0
    assert fleet.relay.registry.agents == {}


async def test_revoked_device_is_403(fleet: Fleet) -> None:
    cert = fleet.device()
    with session_scope(fleet.engine) as session:
        revoke_device(session, device_id_of(cert), reason="stolen")
    await fleet.relay.revocation.reload()
    await expect_status(fleet, "/agent", cert, 403)
    assert fleet.relay.stats.handshakes[("agent", "revoked")] == 1


async def test_unknown_path_is_404_and_bad_subprotocol_is_400(fleet: Fleet) -> None:
    await expect_status(fleet, "/nope", fleet.device(), 404)
    await expect_status(fleet, "/agent", fleet.device(), 400, subprotocols=["outlink.tunnel.v9"])
    await expect_status(fleet, "/agent", fleet.device(), 400, subprotocols=[])
    assert fleet.relay.stats.handshakes[("agent", "bad_subprotocol")] == 2


async def test_same_device_twice_replaces_the_first(fleet: Fleet) -> None:
    cert = fleet.device()
    first = await fleet.agent(cert)
    await fleet.wait_registered(device_id_of(cert))
    second = await fleet.agent(cert)
    async with asyncio.timeout(5 * UNIT):
        await first.closed.wait()
    assert first.error_code is ErrorCode.REPLACED
    assert not second.closing
    link = fleet.relay.registry.agents[device_id_of(cert)]
    assert link.tunnel is not None and not link.tunnel.closing
    assert fleet.relay.stats.replaced == 1


async def test_enroll_is_mounted_without_a_client_certificate(fleet: Fleet) -> None:
    with session_scope(fleet.engine) as session:
        token = create_token(session, ensure_site(session, "acme", "lab"))
    ws = await fleet.ws("/enroll", None, subprotocols=[ENROLL_SUBPROTOCOL])
    await ws.send(encode_request(build_csr(generate_key()), token=token.secret))
    issued = decode_response(await ws.recv())
    assert issued.certificate_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert fleet.relay.stats.handshakes[("enroll", "ok")] == 1


async def test_enroll_refused_on_a_relay_without_the_ca_key(
    fleet_pki: FleetPKI, relay_db: Engine
) -> None:
    async with running_relay(fleet_pki, relay_db, signs=False) as fleet:
        await expect_status(fleet, "/enroll", None, 503, subprotocols=["outlink.enroll.v1"])


async def test_silent_clients_are_dropped_after_the_handshake_timeout(
    fleet_pki: FleetPKI, relay_db: Engine
) -> None:
    """A TCP client that never starts TLS, and a TLS client that never sends its HTTP
    request, are both disconnected once `handshake_timeout` has passed."""
    timeout = 0.5 * UNIT
    listen = ListenConfig(port=0, handshake_timeout=timeout)
    async with running_relay(fleet_pki, relay_db, listen=listen) as fleet:
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", fleet.relay.port)
        tls_reader, tls_writer = await asyncio.open_connection(
            "127.0.0.1", fleet.relay.port, ssl=fleet.context(fleet.device())
        )
        try:
            async with asyncio.timeout(timeout + 5 * UNIT):
                assert await reader.read() == b""
                assert await tls_reader.read() == b""
        finally:
            writer.close()
            tls_writer.close()
        assert loop.time() - started >= timeout
