"""Fixtures for agent tests: real certificates from `pki/`, written to a temp directory."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pki.ca import CertificateAuthority, create_ca
from pki.identity import DeviceId, new_device_id
from pki.issue import issue_device_cert, issue_server_cert
from pki.keys import generate_key, write_file_atomic, write_private_key


@dataclass(frozen=True)
class Fleet:
    """A fleet CA plus the files an agent and a relay need, and a foreign CA's relay cert."""

    dir: Path
    ca: CertificateAuthority
    ca_file: Path
    relay_cert: Path
    relay_key: Path
    agent_cert: Path
    agent_key: Path
    device_id: DeviceId
    # Same names, other CA: what a TLS-intercepting proxy would present.
    foreign_cert: Path
    foreign_key: Path
    # Right CA, wrong name.
    wrong_host_cert: Path
    wrong_host_key: Path

    def device_cert(self, name: str, **kwargs: object) -> tuple[Path, Path]:
        """Issue another device certificate (e.g. expired) into `dir`."""
        key = generate_key()
        cert = issue_device_cert(
            self.ca,
            key.public_key(),
            device_id=new_device_id(),
            customer="acme",
            site="lab",
            **kwargs,  # type: ignore[arg-type]
        )
        return _write(self.dir, name, cert, key)


def _write(directory: Path, name: str, cert: object, key: object) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    write_private_key(key_path, key)  # type: ignore[arg-type]
    write_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))  # type: ignore[attr-defined]
    return cert_path, key_path


def make_fleet(directory: Path) -> Fleet:
    ca = create_ca()
    ca_file = directory / "ca.pem"
    write_file_atomic(ca_file, ca.cert_pem)
    relay = issue_server_cert(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    relay_cert, relay_key = _write(directory, "relay", relay.cert, relay.key)
    key = generate_key()
    device_id = new_device_id()
    cert = issue_device_cert(ca, key.public_key(), device_id=device_id, customer="acme", site="lab")
    agent_cert, agent_key = _write(directory, "agent", cert, key)
    foreign = issue_server_cert(create_ca(), dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    foreign_cert, foreign_key = _write(directory, "foreign", foreign.cert, foreign.key)
    wrong = issue_server_cert(ca, dns_names=["relay.elsewhere.example"])
    wrong_cert, wrong_key = _write(directory, "wronghost", wrong.cert, wrong.key)
    return Fleet(
        directory,
        ca,
        ca_file,
        relay_cert,
        relay_key,
        agent_cert,
        agent_key,
        device_id,
        foreign_cert,
        foreign_key,
        wrong_cert,
        wrong_key,
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return make_fleet(tmp_path_factory.mktemp("fleet"))


def expired_kwargs() -> dict[str, object]:
    """Arguments for `Fleet.device_cert` that produce a certificate expired yesterday."""
    return {"not_before": datetime.now(UTC) - timedelta(days=100), "lifetime": timedelta(days=99)}
