"""Fixtures for real TLS with certificates from ``pki/``, and fresh databases.

Registered by ``tests/conftest.py`` (``pytest_plugins = ["tests.pki_fixtures"]``).

- ``fleet_pki`` (session): a CA directory with the fleet CA, a relay server cert for
  ``localhost``/``127.0.0.1`` and a ``portal`` service cert, plus helpers to issue more
  (device certs with chosen lifetime / not-before, certs from a foreign CA).
- ``db_url`` (function): a fresh, migrated database URL -- SQLite always, PostgreSQL too
  when ``OUTLINK_TEST_POSTGRES_URL`` is set (each test gets its own schema).
- ``db_engine`` (function): an engine on ``db_url``, disposed after the test.
"""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from pki.ca import CA_CERT_FILE, CertificateAuthority, create_ca, init_ca
from pki.identity import DeviceIdentity, ServiceIdentity
from pki.issue import (
    DEFAULT_DEVICE_LIFETIME,
    IssuedCertificate,
    issue_device_cert,
    issue_server_cert,
    issue_service_cert,
)
from pki.keys import generate_key, write_file_atomic
from pki.serials import serial_hex
from pki.tls import client_context, server_context
from protocol.ids import DeviceId, new_device_id
from store.db import make_engine, upgrade

POSTGRES_ENV = "OUTLINK_TEST_POSTGRES_URL"


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its key on disk, with what they name."""

    cert_file: Path
    key_file: Path
    issued: IssuedCertificate
    identity: DeviceIdentity | ServiceIdentity | None = None

    @property
    def serial(self) -> str:
        return serial_hex(self.issued.cert.serial_number)


@dataclass
class FleetPKI:
    """A fleet CA in a temp directory and ways to issue certificates from it.

    ``server``: the relay's cert for ``localhost``/``127.0.0.1``; ``portal``: the
    ``portal`` service cert; ``foreign_ca``: an unrelated CA for wrong-CA tests.
    """

    directory: Path
    ca: CertificateAuthority
    foreign_ca: CertificateAuthority
    server: CertFiles = field(init=False)
    portal: CertFiles = field(init=False)
    _count: int = field(default=0, init=False, repr=False)

    @classmethod
    def create(cls, directory: Path) -> FleetPKI:
        ca, _ = init_ca(directory)
        pki = cls(directory=directory, ca=ca, foreign_ca=create_ca(common_name="Foreign CA"))
        write_file_atomic(pki.foreign_ca_file, pki.foreign_ca.cert_pem)
        pki.server = pki.server_cert(dns=("localhost",), ips=("127.0.0.1",))
        pki.portal = pki.service_cert("portal")
        return pki

    @property
    def ca_file(self) -> Path:
        return self.directory / CA_CERT_FILE

    @property
    def foreign_ca_file(self) -> Path:
        return self.directory / "foreign-ca.pem"

    def _write(
        self,
        stem: str,
        issued: IssuedCertificate,
        identity: DeviceIdentity | ServiceIdentity | None = None,
    ) -> CertFiles:
        self._count += 1
        cert_file = self.directory / f"{stem}-{self._count}.pem"
        key_file = self.directory / f"{stem}-{self._count}.key"
        issued.write(cert_file, key_file)
        return CertFiles(cert_file, key_file, issued, identity)

    def server_cert(
        self,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
        *,
        foreign: bool = False,
    ) -> CertFiles:
        """A relay server cert; ``foreign=True`` signs it with the foreign CA."""
        ca = self.foreign_ca if foreign else self.ca
        return self._write("server", issue_server_cert(ca, dns_names=dns, ip_addresses=ips))

    def service_cert(self, name: str, *, foreign: bool = False) -> CertFiles:
        """A service client cert (``urn:outlink:service:<name>``)."""
        ca = self.foreign_ca if foreign else self.ca
        issued = issue_service_cert(ca, name)
        identity = ServiceIdentity(name, serial_hex(issued.cert.serial_number))
        return self._write(f"service-{name}", issued, identity)

    def device_cert(
        self,
        device_id: DeviceId | None = None,
        customer: str = "acme",
        site: str = "lab",
        *,
        lifetime: timedelta = DEFAULT_DEVICE_LIFETIME,
        not_before: datetime | None = None,
        now: datetime | None = None,
        foreign: bool = False,
    ) -> CertFiles:
        """A device client cert. Expired: ``not_before`` in the past and a short
        ``lifetime``; not yet valid: ``not_before`` in the future; wrong CA: ``foreign``."""
        ca = self.foreign_ca if foreign else self.ca
        device_id = device_id or new_device_id()
        key = generate_key()
        cert = issue_device_cert(
            ca,
            key.public_key(),
            device_id=device_id,
            customer=customer,
            site=site,
            lifetime=lifetime,
            not_before=not_before,
            now=now,
        )
        identity = DeviceIdentity(device_id, customer, site, serial_hex(cert.serial_number))
        return self._write("device", IssuedCertificate(cert=cert, key=key), identity)

    def server_context(self, server: CertFiles | None = None) -> ssl.SSLContext:
        """The relay's server context (fleet CA, CERT_OPTIONAL) with ``server`` or the default."""
        server = server or self.server
        return server_context(server.cert_file, server.key_file, self.ca_file)

    def client_context(
        self, client: CertFiles | None = None, *, ca_file: Path | None = None
    ) -> ssl.SSLContext:
        """A client context pinning the fleet CA (or ``ca_file``), presenting ``client``."""
        ca = ca_file or self.ca_file
        if client is None:
            return client_context(ca)
        return client_context(ca, client.cert_file, client.key_file)


@pytest.fixture(scope="session")
def fleet_pki(tmp_path_factory: pytest.TempPathFactory) -> FleetPKI:
    """One fleet CA and standard certificates for the whole test session."""
    return FleetPKI.create(tmp_path_factory.mktemp("fleet-pki"))


def _postgres_schema_url(base: str, schema: str) -> str:
    url = make_url(base)
    options = f"-csearch_path={schema}"
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database migrated to head; runs each test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'outlink.db'}"
        upgrade(url)
        yield url
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} not set")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = make_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = _postgres_schema_url(base, schema)
        upgrade(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on the fresh test database."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()
