"""Fixtures for agent tests: real certificates from `pki/`, written to a temp directory."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.identity import IdentityFiles
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

    def identity_dir(self, name: str, **kwargs: object) -> Path:
        """A fresh enrolled identity directory (agent.identity layout) for a new device.

        `kwargs` go to `issue_device_cert` (e.g. `lifetime`, `not_before`).
        """
        directory = self.dir / name
        directory.mkdir(mode=0o700)
        key = generate_key()
        cert = issue_device_cert(
            self.ca,
            key.public_key(),
            device_id=new_device_id(),
            customer="acme",
            site="lab",
            **kwargs,  # type: ignore[arg-type]
        )
        files = IdentityFiles(directory)
        write_private_key(files.key_file, key)
        write_file_atomic(files.cert_file, cert.public_bytes(serialization.Encoding.PEM))
        write_file_atomic(files.ca_file, self.ca.cert_pem)
        return directory


def _write(directory: Path, name: str, cert: object, key: object) -> tuple[Path, Path]:
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


def expired() -> dict[str, object]:
    """`Fleet.identity_dir` arguments for a certificate that expired yesterday."""
    return {"not_before": datetime.now(UTC) - timedelta(days=100), "lifetime": timedelta(days=99)}


def renewal_due() -> dict[str, object]:
    """`Fleet.identity_dir` arguments for a valid certificate with < 1/3 of its life left."""
    return {"not_before": datetime.now(UTC) - timedelta(days=70), "lifetime": timedelta(days=90)}
