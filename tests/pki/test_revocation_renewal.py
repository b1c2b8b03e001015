"""Revocation views and certificate renewal (server side and the agent's file swap)."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine

from agent.identity import (
    AgentIdentity,
    begin_renewal,
    complete_renewal,
    load_identity,
)
from pki.fleet import certify_device, create_device, ensure_site
from pki.identity import DeviceIdentity, IdentityError, identity_from_cert
from pki.keys import generate_key, load_private_key, write_file_atomic, write_private_key
from pki.renewal import build_csr, handle_renewal_request, needs_renewal, renew, renewal_due_at
from pki.revocation import (
    export_crl,
    is_device_revoked,
    revoke_certificate,
    revoke_device,
    revoked_devices,
    revoked_serials,
)
from pki.serials import serial_hex
from pki.wire import Refused
from store.db import session_scope
from store.models import Device
from tests.pki_fixtures import FleetPKI

T0 = datetime(2030, 1, 1, tzinfo=UTC)
PEM = serialization.Encoding.PEM


def enrolled(
    engine: Engine, fleet_pki: FleetPKI, directory: Path | None = None
) -> tuple[DeviceIdentity, x509.Certificate]:
    """A device registered in the store with a recorded certificate (optionally on disk)."""
    key = generate_key()
    with session_scope(engine) as session:
        device = create_device(session, ensure_site(session, "acme", "lab"), now=T0)
        cert = certify_device(session, fleet_pki.ca, device, key.public_key(), now=T0)
    if directory is not None:
        directory.mkdir(mode=0o700)
        write_private_key(directory / "device.key", key)
        write_file_atomic(directory / "device.pem", cert.public_bytes(PEM))
        write_file_atomic(directory / "ca.pem", fleet_pki.ca.cert_pem)
    identity = identity_from_cert(cert)
    assert isinstance(identity, DeviceIdentity)
    return identity, cert


def test_revoke_device_marks_device_and_all_certs(db_engine: Engine, fleet_pki: FleetPKI) -> None:
    identity, cert = enrolled(db_engine, fleet_pki)
    other, _ = enrolled(db_engine, fleet_pki)
    with session_scope(db_engine) as session:
        second = renew(session, fleet_pki.ca, identity, build_csr(generate_key()), now=T0)
        assert revoked_serials(session) == frozenset()
        assert revoke_device(session, identity.device_id, reason="stolen", now=T0)
        assert not revoke_device(session, "00000000-0000-4000-8000-000000000000", reason="x")
    with session_scope(db_engine) as session:
        assert revoked_devices(session) == {identity.device_id}
        assert revoked_serials(session) == {identity.serial, serial_hex(second.serial_number)}
        assert is_device_revoked(session, identity.device_id)
        assert not is_device_revoked(session, other.device_id)
        # Idempotent: first time and reason stay.
        assert revoke_device(session, identity.device_id, reason="again", now=T0 + timedelta(1))
        device = session.get_one(Device, identity.device_id)
        assert (device.revoked_at, device.revoked_reason) == (T0, "stolen")
    with session_scope(db_engine) as session:
        crl = x509.load_pem_x509_crl(export_crl(session, fleet_pki.ca, now=T0))
    assert crl.is_signature_valid(fleet_pki.ca.cert.public_key())  # type: ignore[arg-type]
    revoked = {format(r.serial_number, "x") for r in crl}
    assert revoked == {identity.serial, serial_hex(second.serial_number)}
    assert cert.serial_number in {r.serial_number for r in crl}


def test_revoke_single_certificate(db_engine: Engine, fleet_pki: FleetPKI) -> None:
    identity, _ = enrolled(db_engine, fleet_pki)
    with session_scope(db_engine) as session:
        assert revoke_certificate(session, identity.serial.upper(), reason="key leaked")
        assert not revoke_certificate(session, identity.serial, reason="again")
        assert revoked_serials(session) == {identity.serial}
        assert revoked_devices(session) == frozenset()


def test_needs_renewal_at_two_thirds_of_lifetime(fleet_pki: FleetPKI) -> None:
    cert = fleet_pki.device_cert(not_before=T0, lifetime=timedelta(days=90)).issued.cert
    assert renewal_due_at(cert) == T0 + timedelta(days=60)
    assert not needs_renewal(cert, T0 + timedelta(days=59, hours=23))
    assert needs_renewal(cert, T0 + timedelta(days=60))
    assert needs_renewal(cert, T0 + timedelta(days=100))
    assert not needs_renewal(cert, T0 + timedelta(days=80), fraction=0.1)


def test_renewal_keeps_the_identity(db_engine: Engine, fleet_pki: FleetPKI) -> None:
    identity, old = enrolled(db_engine, fleet_pki)
    key = generate_key()
    with session_scope(db_engine) as session:
        new = renew(session, fleet_pki.ca, identity, build_csr(key), now=T0 + timedelta(days=61))
    renewed = identity_from_cert(new)
    assert isinstance(renewed, DeviceIdentity)
    assert (renewed.device_id, renewed.customer, renewed.site) == (
        identity.device_id,
        identity.customer,
        identity.site,
    )
    assert renewed.serial != identity.serial
    assert new.public_key() == key.public_key()
    assert new.not_valid_after_utc > old.not_valid_after_utc


def test_renewal_refuses_revoked_device_or_cert(db_engine: Engine, fleet_pki: FleetPKI) -> None:
    identity, _ = enrolled(db_engine, fleet_pki)
    other, _ = enrolled(db_engine, fleet_pki)
    with session_scope(db_engine) as session:
        revoke_device(session, identity.device_id, reason="decommissioned")
        revoke_certificate(session, other.serial, reason="key leaked")
    for who in (identity, other):
        with pytest.raises(Refused) as info, session_scope(db_engine) as session:
            renew(session, fleet_pki.ca, who, build_csr(generate_key()))
        assert info.value.code == "revoked"
    stranger = fleet_pki.device_cert().identity
    assert isinstance(stranger, DeviceIdentity)
    with pytest.raises(Refused, match="revoked"), session_scope(db_engine) as session:
        renew(session, fleet_pki.ca, stranger, build_csr(generate_key()))


def test_handle_renewal_request_wire(db_engine: Engine, fleet_pki: FleetPKI) -> None:
    identity, _ = enrolled(db_engine, fleet_pki)
    request = json.dumps({"csr": build_csr(generate_key()).decode()})
    answer = json.loads(handle_renewal_request(db_engine, fleet_pki.ca, identity, request))
    assert answer["ok"] and answer["device_id"] == identity.device_id
    bad = json.loads(handle_renewal_request(db_engine, fleet_pki.ca, identity, b"{}"))
    assert (bad["ok"], bad["error"]) == (False, "invalid_request")


def test_agent_renewal_swaps_key_and_cert(
    db_engine: Engine, fleet_pki: FleetPKI, tmp_path: Path
) -> None:
    directory = tmp_path / "id"
    identity, _ = enrolled(db_engine, fleet_pki, directory)
    agent = load_identity(directory)
    assert agent.identity == identity
    old_key = (directory / "device.key").read_bytes()

    request = begin_renewal(agent)
    pending = directory / "device.key.new"
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in request.encode()
    answer = handle_renewal_request(db_engine, fleet_pki.ca, agent.identity, request)
    renewed = complete_renewal(agent, answer)

    assert renewed.identity.device_id == identity.device_id
    assert renewed.identity.serial != identity.serial
    assert (directory / "device.key").read_bytes() != old_key
    assert not pending.exists() and not (directory / "device.pem.new").exists()
    assert load_identity(directory).identity == renewed.identity
    renewed.ssl_context()  # key and certificate load together


def test_agent_renewal_refused_keeps_current_credentials(
    db_engine: Engine, fleet_pki: FleetPKI, tmp_path: Path
) -> None:
    directory = tmp_path / "id"
    identity, _ = enrolled(db_engine, fleet_pki, directory)
    agent = load_identity(directory)
    with session_scope(db_engine) as session:
        revoke_device(session, identity.device_id, reason="x")
    answer = handle_renewal_request(db_engine, fleet_pki.ca, agent.identity, begin_renewal(agent))
    with pytest.raises(Refused, match="revoked"):
        complete_renewal(agent, answer)
    assert load_identity(directory).identity == identity


def test_agent_refuses_a_renewal_for_another_device(
    db_engine: Engine, fleet_pki: FleetPKI, tmp_path: Path
) -> None:
    directory = tmp_path / "id"
    enrolled(db_engine, fleet_pki, directory)
    agent = load_identity(directory)
    begin_renewal(agent)
    key = load_private_key(directory / "device.key.new")
    other, _ = enrolled(db_engine, fleet_pki)
    with session_scope(db_engine) as session:
        cert = renew(session, fleet_pki.ca, other, build_csr(key))  # type: ignore[arg-type]
    answer = json.dumps(
        {
            "ok": True,
            "device_id": other.device_id,
            "certificate": cert.public_bytes(PEM).decode(),
            "ca_certificate": fleet_pki.ca.cert_pem.decode(),
        }
    )
    with pytest.raises(IdentityError, match="another device"):
        complete_renewal(agent, answer)
    assert load_identity(directory).identity == agent.identity


def test_interrupted_swap_is_completed_on_load(
    db_engine: Engine, fleet_pki: FleetPKI, tmp_path: Path
) -> None:
    directory = tmp_path / "id"
    enrolled(db_engine, fleet_pki, directory)
    agent = load_identity(directory)
    answer = handle_renewal_request(db_engine, fleet_pki.ca, agent.identity, begin_renewal(agent))
    new_pem = json.loads(answer)["certificate"].encode()
    # Crash after the key rename, before the certificate rename:
    write_file_atomic(directory / "device.pem.new", new_pem)
    os.replace(directory / "device.key.new", directory / "device.key")
    loaded: AgentIdentity = load_identity(directory)
    assert loaded.cert.public_bytes(PEM) == new_pem
