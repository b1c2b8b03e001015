"""Fixtures for agent tests: the shared fleet PKI (tests/pki_fixtures) seen from an agent."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.identity import IdentityFiles
from pki.ca import CertificateAuthority
from tests.pki_fixtures import FleetPKI


@dataclass(frozen=True)
class Fleet:
    """What agent tests use: the fleet CA, a relay cert, one for a foreign CA (what a
    TLS-intercepting proxy would present), one for another host name, and agent identities."""

    pki: FleetPKI
    dir: Path
    relay_cert: Path
    relay_key: Path
    agent_cert: Path
    agent_key: Path
    foreign_cert: Path
    foreign_key: Path
    wrong_host_cert: Path
    wrong_host_key: Path

    @property
    def ca(self) -> CertificateAuthority:
        return self.pki.ca

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_file

    def identity_dir(self, name: str, **kwargs: Any) -> Path:
        """A fresh enrolled identity directory (agent.identity layout) for a new device.

        `kwargs` go to `FleetPKI.device_cert` (e.g. `lifetime`, `not_before`).
        """
        cert = self.pki.device_cert(**kwargs)
        files = IdentityFiles(self.dir / name)
        files.directory.mkdir(mode=0o700)
        shutil.copy(cert.key_file, files.key_file)  # copy() keeps the 0600 mode
        shutil.copy(cert.cert_file, files.cert_file)
        shutil.copy(self.ca_file, files.ca_file)
        return files.directory


@pytest.fixture(scope="module")
def fleet(fleet_pki: FleetPKI, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    foreign = fleet_pki.server_cert(foreign=True)
    wrong_host = fleet_pki.server_cert(dns=("relay.elsewhere.example",), ips=())
    agent = fleet_pki.device_cert()
    return Fleet(
        pki=fleet_pki,
        dir=tmp_path_factory.mktemp("agent-identities"),
        relay_cert=fleet_pki.server.cert_file,
        relay_key=fleet_pki.server.key_file,
        agent_cert=agent.cert_file,
        agent_key=agent.key_file,
        foreign_cert=foreign.cert_file,
        foreign_key=foreign.key_file,
        wrong_host_cert=wrong_host.cert_file,
        wrong_host_key=wrong_host.key_file,
    )


def expired() -> dict[str, object]:
    """`Fleet.identity_dir` arguments for a certificate that expired yesterday."""
    return {"not_before": datetime.now(UTC) - timedelta(days=100), "lifetime": timedelta(days=99)}


def renewal_due() -> dict[str, object]:
    """`Fleet.identity_dir` arguments for a valid certificate with < 1/3 of its life left."""
    return {"not_before": datetime.now(UTC) - timedelta(days=70), "lifetime": timedelta(days=90)}
