"""Every refused certificate leaves a trace: one JSON log line, one audit row and a
metric by reason -- and a flood of refusals writes a bounded number of events."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, select
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from pki.revocation import revoke_device
from relay_server.audit import AuditLog
from relay_server.config import ViewerConfig
from relay_server.desktop.viewer import JOIN_REFUSED, SUBPROTOCOL
from relay_server.metrics import RelayStats
from relay_server.refusals import (
    AUDIT_KIND,
    RELAY_BURST,
    SOURCE_BURST,
    SOURCE_RATE,
    SUMMARY_KIND,
    UNAUDITED_KIND,
    RefusalLog,
    certificate_fields,
)
from store.db import session_scope
from store.portal import AuditEvent
from tests.conftest import UNIT
from tests.pki_fixtures import CertFiles, FleetPKI
from tests.relay.conftest import Fleet, device_id_of, running_relay, wait_for

PORTAL_ORIGIN = "https://portal.test"
# How many refused handshakes the flood test makes at a time.
FLOOD_CONCURRENCY = 25


def security_lines(captured: io.StringIO, kind: str = AUDIT_KIND) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    return [line for line in lines if line.get("security_event") == kind]


async def audit_rows(fleet: Fleet, kind: str = AUDIT_KIND) -> list[AuditEvent]:
    await fleet.relay.audit.flush()
    with session_scope(fleet.engine) as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.kind == kind))
        return list(rows)


def refusals_metric(fleet: Fleet, reason: str, name: str = "outlink_relay_refusals") -> float:
    value = fleet.relay.metrics_registry.get_sample_value(f"{name}_total", {"reason": reason})
    return value or 0.0


async def refused_handshake(port: int, context: ssl.SSLContext) -> None:
    """One TLS connection the relay refuses: the client sees the alert in the handshake
    (TLS 1.2) or a reset right after it (TLS 1.3, the client's certificate comes last)."""
    with contextlib.suppress(ssl.SSLError, OSError):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        try:
            await reader.read()
        finally:
            writer.close()


def tls_refusal_cert(fleet: Fleet, kind: str) -> CertFiles:
    now = datetime.now(UTC)
    if kind == "unknown_ca":
        return fleet.device(foreign=True)
    if kind == "expired":
        return fleet.device(not_before=now - timedelta(days=10), lifetime=timedelta(days=1))
    assert kind == "wrong_purpose"
    return fleet.pki.server  # serverAuth only: not a client certificate


@pytest.mark.parametrize("reason", ["unknown_ca", "expired", "wrong_purpose"])
async def test_certificates_refused_at_the_tls_handshake_are_recorded(
    fleet: Fleet, captured: io.StringIO, reason: str
) -> None:
    """The TLS layer gives only the verify verdict: reason, code and message, peer."""
    cert = tls_refusal_cert(fleet, reason)
    await refused_handshake(fleet.relay.port, fleet.context(cert))
    await wait_for(lambda: fleet.relay.stats.refusals[reason] == 1)

    [line] = security_lines(captured)
    assert line["reason"] == reason and line["endpoint"] == "tls"
    assert line["port"] == fleet.relay.port and line["peer"].startswith("127.0.0.1:")
    assert line["verify_code"] > 0 and line["verify_message"]
    assert line["level"] == "WARNING" and line["time"]
    [row] = await audit_rows(fleet)
    assert row.outcome == "failure" and row.source == line["peer"]
    assert json.loads(row.details)["reason"] == reason
    assert refusals_metric(fleet, reason) == 1
    assert fleet.relay.registry.agents == {}


async def test_revoked_certificate_is_recorded_with_issuer_serial_and_fingerprint(
    fleet: Fleet, captured: io.StringIO
) -> None:
    """Refused after TLS, where the certificate is known: what identifies it is logged."""
    cert = fleet.device()
    with session_scope(fleet.engine) as session:
        revoke_device(session, device_id_of(cert), reason="stolen")
    await fleet.relay.revocation.reload()
    with pytest.raises(InvalidStatus, match="403"):
        await fleet.ws("/agent", cert)

    [line] = security_lines(captured)
    issuer = cert.issued.cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert line["reason"] == "revoked" and line["endpoint"] == "agent"
    assert isinstance(issuer, str) and issuer in line["issuer"]
    assert line["serial"] == cert.serial
    assert (
        line["fingerprint"]
        == hashlib.sha256(cert.issued.cert.public_bytes(Encoding.DER)).hexdigest()
    )
    assert line["status"] == 403 and line["peer"].startswith("127.0.0.1:")
    [row] = await audit_rows(fleet)
    details = json.loads(row.details)
    assert (details["serial"], details["fingerprint"]) == (line["serial"], line["fingerprint"])
    assert row.device_id == device_id_of(cert)
    assert refusals_metric(fleet, "revoked") == 1
    assert not [
        json.loads(raw)
        for raw in captured.getvalue().splitlines()
        if "handshake refused" in json.loads(raw)["message"]
    ], "one line per refusal, not two"


async def test_no_certificate_and_wrong_identity_are_recorded(
    fleet: Fleet, captured: io.StringIO
) -> None:
    with pytest.raises(InvalidStatus, match="401"):
        await fleet.ws("/agent", None)
    with pytest.raises(InvalidStatus, match="403"):
        await fleet.ws("/service", fleet.device())
    assert [line["reason"] for line in security_lines(captured)] == ["no_cert", "wrong_identity"]
    assert "serial" not in security_lines(captured)[0]
    assert len(await audit_rows(fleet)) == 2
    assert refusals_metric(fleet, "wrong_identity") == 1


@pytest.fixture
async def viewer_fleet(fleet_pki: FleetPKI, relay_db: Engine) -> AsyncIterator[Fleet]:
    """A relay with its viewer port open."""
    viewer = ViewerConfig(allowed_origins=(PORTAL_ORIGIN,), port=0)
    async with running_relay(fleet_pki, relay_db, viewer=viewer) as fleet:
        yield fleet


async def test_viewer_port_tls_failures_are_recorded(
    viewer_fleet: Fleet, captured: io.StringIO
) -> None:
    """The viewer port asks for no certificate; what it refuses is TLS itself: logged,
    not audited (internet scanners would fill the audit trail with nothing to act on)."""
    port = viewer_fleet.desktop.viewers.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /view HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP on a TLS port
    await reader.read()
    writer.close()
    await wait_for(lambda: viewer_fleet.relay.stats.refusals["tls_failed"] == 1)
    [line] = security_lines(captured, UNAUDITED_KIND)
    assert line["port"] == port and line["tls_error"] and line["peer"].startswith("127.0.0.1:")
    assert await audit_rows(viewer_fleet) == []


async def test_a_flood_of_foreign_origins_on_the_viewer_port_is_bounded(
    viewer_fleet: Fleet, captured: io.StringIO
) -> None:
    """Refused viewers are audited as join refusals -- rate-limited like certificates."""
    total = 3 * SOURCE_BURST
    url = f"wss://127.0.0.1:{viewer_fleet.desktop.viewers.port}/view?ticket=x"
    for _ in range(total):
        with pytest.raises(InvalidStatus, match="403"):
            await connect(
                url,
                ssl=viewer_fleet.pki.client_context(),
                origin=Origin("https://evil.example"),
                subprotocols=[SUBPROTOCOL],
                open_timeout=5 * UNIT,
            )
    viewer_fleet.relay.refusals.sweep()
    assert len(security_lines(captured, JOIN_REFUSED)) == SOURCE_BURST
    assert len(await audit_rows(viewer_fleet, JOIN_REFUSED)) == SOURCE_BURST
    [summary] = await audit_rows(viewer_fleet, SUMMARY_KIND)
    assert json.loads(summary.details)["suppressed"] == total - SOURCE_BURST
    assert refusals_metric(viewer_fleet, "bad_origin") == total


async def test_stray_requests_are_logged_but_not_audited(
    fleet: Fleet, captured: io.StringIO
) -> None:
    with pytest.raises(InvalidStatus, match="404"):
        await fleet.ws("/nope", fleet.device())
    [line] = security_lines(captured, UNAUDITED_KIND)
    assert line["reason"] == "not_found" and line["level"] == "INFO"
    assert "serial" in line  # the certificate it came with is named all the same
    assert await audit_rows(fleet) == []
    assert refusals_metric(fleet, "not_found") == 1


async def test_a_flood_of_refusals_writes_a_bounded_number_of_events(
    fleet: Fleet, captured: io.StringIO
) -> None:
    """1,000 expired handshakes from one address: a burst of events, the rest counted
    and summarised in one event; the metric counts every one."""
    total = 1000
    context = fleet.context(tls_refusal_cert(fleet, "expired"))
    gate = asyncio.Semaphore(FLOOD_CONCURRENCY)

    async def one() -> None:
        async with gate:
            await refused_handshake(fleet.relay.port, context)

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(total)))
    await wait_for(lambda: fleet.relay.stats.refusals["expired"] == total, 30 * UNIT)
    elapsed = time.monotonic() - started
    fleet.relay.refusals.sweep()

    logged = len(security_lines(captured))
    assert SOURCE_BURST <= logged <= SOURCE_BURST + int(elapsed * SOURCE_RATE)
    [summary] = security_lines(captured, SUMMARY_KIND)
    assert summary["suppressed"] == total - logged and summary["sources"] == 1
    assert summary["top_sources"] == [{"source": "127.0.0.1", "refusals": total - logged}]
    assert len(await audit_rows(fleet)) == logged
    assert len(await audit_rows(fleet, SUMMARY_KIND)) == 1
    assert refusals_metric(fleet, "expired") == total
    assert refusals_metric(fleet, "expired", "outlink_relay_refusals_suppressed") == total - logged
    assert fleet.relay.refusals.sweep() == 0  # summarised once


def test_many_sources_are_bounded_by_the_relay_wide_bucket(relay_db: Engine) -> None:
    """A flood from many addresses (each within its own bucket) still writes at most
    the relay's burst, then one summary."""
    audit = AuditLog(relay_db, "relay-test")  # not started: count what it queues
    stats = RelayStats()
    refusals = RefusalLog(audit, stats, now=0.0)
    for i in range(1000):
        refusals.refused(
            "unknown_ca", 1.0, source=f"10.0.{i // 256}.{i % 256}", peer="p", endpoint="tls"
        )
    assert audit.pending() == RELAY_BURST
    assert refusals.sweep() == 1 and audit.pending() == RELAY_BURST + 1
    assert stats.refusals["unknown_ca"] == 1000
    assert stats.refusals_suppressed["unknown_ca"] == 1000 - RELAY_BURST


def test_a_certificate_that_does_not_parse_is_still_named_by_its_fingerprint() -> None:
    """Recording a refusal must not fail on bytes a stricter parser rejects."""
    assert certificate_fields(b"\x30\x03\x02\x01\x00") == {
        "fingerprint": hashlib.sha256(b"\x30\x03\x02\x01\x00").hexdigest()
    }


async def test_what_was_held_back_is_summarised_at_shutdown(
    fleet_pki: FleetPKI, relay_db: Engine
) -> None:
    """Stopping the relay writes the pending summary: no refusal goes unrecorded."""
    async with running_relay(fleet_pki, relay_db) as fleet:
        for _ in range(SOURCE_BURST + 2):
            with pytest.raises(InvalidStatus, match="401"):
                await fleet.ws("/agent", None)
    with session_scope(relay_db) as session:
        kinds = list(session.scalars(select(AuditEvent.kind)))
        [summary] = session.scalars(select(AuditEvent).where(AuditEvent.kind == SUMMARY_KIND))
        assert json.loads(summary.details)["suppressed"] == 2
    assert kinds.count(AUDIT_KIND) == SOURCE_BURST
