"""``outlink-pki`` as an operator runs it: real subprocesses with the venv's Python."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from sqlalchemy import Engine

from pki.fleet import certify_device, create_device, ensure_site
from pki.identity import ServiceIdentity, identity_from_cert
from pki.keys import generate_key
from pki.tokens import consume_token
from store.db import session_scope
from tests.conftest import UNIT
from tests.pki_fixtures import FleetPKI

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OUTLINK_DB_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pki", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60 * UNIT,
    )
    assert (proc.returncode == 0) == ok, proc.stderr
    return proc


def test_init_is_idempotent(tmp_path: Path) -> None:
    ca_dir = tmp_path / "pki"
    assert "created" in run("init", "--dir", str(ca_dir)).stderr
    first = (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes()
    assert "kept existing" in run("init", "--dir", str(ca_dir)).stderr
    assert first == ((ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes())
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600


def test_server_and_service_certs(tmp_path: Path) -> None:
    ca_dir = str(tmp_path)
    run("init", "--dir", ca_dir)
    run("server-cert", "--dir", ca_dir, "--dns", "localhost", "--ip", "127.0.0.1")
    cert = x509.load_pem_x509_certificate((tmp_path / "relay.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert stat.S_IMODE((tmp_path / "relay.key").stat().st_mode) == 0o600
    # Same names again: kept; other names: reissued.
    assert (
        "kept"
        in run("server-cert", "--dir", ca_dir, "--dns", "localhost", "--ip", "127.0.0.1").stderr
    )
    assert (
        (tmp_path / "relay.pem").read_bytes() == cert.public_bytes(x509.Encoding.PEM)
        if hasattr(x509, "Encoding")
        else True
    )
    run("server-cert", "--dir", ca_dir, "--dns", "relay.example")
    assert x509.load_pem_x509_certificate((tmp_path / "relay.pem").read_bytes()) != cert

    run("service-cert", "--dir", ca_dir, "--name", "portal")
    portal = x509.load_pem_x509_certificate((tmp_path / "portal.pem").read_bytes())
    assert identity_from_cert(portal) == ServiceIdentity(
        "portal", format(portal.serial_number, "x")
    )
    run("service-cert", "--dir", ca_dir, "--name", "ca", ok=False)
    run("service-cert", "--dir", ca_dir, "--name", "Bad Name", ok=False)


def test_cert_commands_without_ca_fail_cleanly(tmp_path: Path) -> None:
    proc = run("server-cert", "--dir", str(tmp_path), "--dns", "localhost", ok=False)
    assert "Traceback" not in proc.stderr and "missing" in proc.stderr


def test_tokens_devices_and_revocation(db_url: str, db_engine: Engine, fleet_pki: FleetPKI) -> None:
    proc = run(
        "token",
        "create",
        "--db",
        db_url,
        "--customer",
        "acme",
        "--customer-name",
        "Acme Hospitals",
        "--site",
        "lab",
        "--ttl",
        "600",
        "--note",
        "CT scanner",
    )
    secret = proc.stdout.strip()
    assert secret.startswith("olk_") and "\n" not in secret
    created = json.loads(
        run(
            "token", "create", "--db", db_url, "--customer", "acme", "--site", "lab", "--json"
        ).stdout
    )
    listed = json.loads(run("token", "list", "--db", db_url, "--json").stdout)
    assert [t["state"] for t in listed] == ["active", "active"]
    assert secret not in json.dumps(listed)

    run("token", "revoke", "--db", db_url, str(created["id"]))
    run("token", "revoke", "--db", db_url, str(created["id"]), ok=False)
    states = {
        t["id"]: t["state"]
        for t in json.loads(run("token", "list", "--db", db_url, "--all", "--json").stdout)
    }
    assert states == {created["id"]: "revoked", created["id"] - 1: "active"}

    with session_scope(db_engine) as session:
        assert consume_token(session, secret) is not None
        device = create_device(session, ensure_site(session, "acme", "lab"))
        certify_device(session, fleet_pki.ca, device, generate_key().public_key())
        device_id = device.id
    devices = json.loads(run("devices", "--db", db_url, "--json").stdout)
    assert [(d["device_id"], d["customer"], d["site"], d["revoked_at"]) for d in devices] == [
        (device_id, "acme", "lab", None)
    ]

    run("revoke", "--db", db_url, "--device", device_id, "--reason", "stolen")
    run("revoke", "--db", db_url, "--device", "nope", "--reason", "x", ok=False)
    listing = run("devices", "--db", db_url).stdout
    assert device_id in listing and "revoked" in listing and "stolen" in listing
