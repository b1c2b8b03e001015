"""Identity parsing (both forms) and the TLS contexts, with in-memory TLS handshakes."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from pki.identity import (
    DeviceIdentity,
    IdentityError,
    ServiceIdentity,
    identity_from_cert,
    identity_from_peercert,
)
from pki.keys import generate_key
from protocol.ids import new_device_id
from tests.pki_fixtures import CertFiles, FleetPKI


@dataclass
class Handshake:
    client: ssl.SSLObject
    server: ssl.SSLObject


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str = "localhost"
) -> Handshake:
    """Run a TLS handshake between two contexts through memory BIOs (no sockets)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server verifies the client's certificate after sending Finished.
            server.write(b"x")
            c_in.write(s_out.read())
            client.read()
            client.write(b"y")
            s_in.write(c_out.read())
            server.read()
            return Handshake(client, server)
    raise AssertionError("handshake did not finish")


def test_device_identity_from_cert_and_from_peercert(fleet_pki: FleetPKI) -> None:
    device = fleet_pki.device_cert(customer="acme", site="ward-7")
    from_cert = identity_from_cert(device.issued.cert)
    assert from_cert == device.identity
    hs = handshake(fleet_pki.server_context(), fleet_pki.client_context(device))
    assert identity_from_peercert(hs.server.getpeercert()) == from_cert


def test_service_identity_both_forms(fleet_pki: FleetPKI) -> None:
    hs = handshake(fleet_pki.server_context(), fleet_pki.client_context(fleet_pki.portal))
    identity = identity_from_peercert(hs.server.getpeercert())
    assert identity == identity_from_cert(fleet_pki.portal.issued.cert)
    assert isinstance(identity, ServiceIdentity) and identity.name == "portal"


def test_no_client_cert_is_allowed_at_tls_but_has_no_identity(fleet_pki: FleetPKI) -> None:
    hs = handshake(fleet_pki.server_context(), fleet_pki.client_context())
    assert hs.server.getpeercert() is None
    with pytest.raises(IdentityError):
        identity_from_peercert(hs.server.getpeercert())


def make_cert(fleet_pki: FleetPKI, cns: Iterable[str], uris: Iterable[str]) -> x509.Certificate:
    key = generate_key()
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns]))
        .issuer_name(fleet_pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    uris = list(uris)
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    return builder.sign(fleet_pki.ca.key, hashes.SHA256())


DEV = "3f1f6a39-9a0e-4c1e-8f57-2a4c1b5b6d7e"


@pytest.mark.parametrize(
    ("cns", "uris"),
    [
        ([DEV], []),
        ([DEV], ["urn:outlink:customer:acme", "urn:outlink:site:lab"]),
        ([DEV], [f"urn:outlink:device:{DEV}", "urn:outlink:site:lab"]),
        ([DEV], [f"urn:outlink:device:{DEV}", "urn:outlink:customer:acme"]),
        (["other"], [f"urn:outlink:device:{DEV}", "urn:outlink:customer:a", "urn:outlink:site:b"]),
        (["x"], ["urn:outlink:device:not-a-uuid", "urn:outlink:customer:a", "urn:outlink:site:b"]),
        (
            [DEV.upper()],
            [f"urn:outlink:device:{DEV.upper()}", "urn:outlink:customer:a", "urn:outlink:site:b"],
        ),
        (
            [DEV],
            [f"urn:outlink:device:{DEV}", "urn:outlink:customer:A B", "urn:outlink:site:b"],
        ),
        (
            [DEV],
            [
                f"urn:outlink:device:{DEV}",
                f"urn:outlink:device:{new_device_id()}",
                "urn:outlink:customer:a",
                "urn:outlink:site:b",
            ],
        ),
        (
            [DEV],
            [
                f"urn:outlink:device:{DEV}",
                "urn:outlink:customer:a",
                "urn:outlink:site:b",
                "urn:outlink:service:portal",
            ],
        ),
        (["p"], ["urn:outlink:service:"]),
    ],
)
def test_malformed_identities_are_refused(
    fleet_pki: FleetPKI, cns: list[str], uris: list[str]
) -> None:
    with pytest.raises(IdentityError):
        identity_from_cert(make_cert(fleet_pki, cns, uris))


def test_well_formed_handmade_identity(fleet_pki: FleetPKI) -> None:
    cert = make_cert(
        fleet_pki,
        [DEV],
        [f"urn:outlink:device:{DEV}", "urn:outlink:customer:a", "urn:outlink:site:b"],
    )
    identity = identity_from_cert(cert)
    assert isinstance(identity, DeviceIdentity) and identity.device_id == DEV


def test_tls_versions_and_ciphers(fleet_pki: FleetPKI) -> None:
    hs = handshake(fleet_pki.server_context(), fleet_pki.client_context())
    assert hs.client.version() == "TLSv1.3"
    assert hs.client.cipher()[0] == "TLS_AES_256_GCM_SHA384"  # type: ignore[index]

    tls12 = fleet_pki.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    hs = handshake(fleet_pki.server_context(), tls12)
    assert hs.client.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"  # type: ignore[index]

    server = fleet_pki.server_context()
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert server.options & ssl.OP_NO_COMPRESSION and server.options & ssl.OP_NO_RENEGOTIATION
    names = [c["name"] for c in server.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert names[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
    assert all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in names)


def test_weak_tls12_suites_are_refused(fleet_pki: FleetPKI) -> None:
    cbc = fleet_pki.client_context()
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA")  # CBC, no AEAD
    with pytest.raises(ssl.SSLError):
        handshake(fleet_pki.server_context(), cbc)


def test_client_trusts_only_the_pinned_ca(fleet_pki: FleetPKI) -> None:
    ctx = fleet_pki.client_context()
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.cert_store_stats()["x509_ca"] == 1  # no system store
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_client_accepts_the_relay(fleet_pki: FleetPKI, hostname: str) -> None:
    handshake(fleet_pki.server_context(), fleet_pki.client_context(), hostname)


def test_client_refuses_foreign_ca_and_wrong_hostname(fleet_pki: FleetPKI) -> None:
    foreign = fleet_pki.server_context(fleet_pki.server_cert(foreign=True))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(foreign, fleet_pki.client_context())
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(fleet_pki.server_context(), fleet_pki.client_context(), "relay.example")


def bad_client_certs(fleet_pki: FleetPKI) -> dict[str, CertFiles]:
    now = datetime.now(UTC)
    return {
        "foreign_ca": fleet_pki.device_cert(foreign=True),
        "expired": fleet_pki.device_cert(
            not_before=now - timedelta(days=2), lifetime=timedelta(days=1)
        ),
        "not_yet_valid": fleet_pki.device_cert(not_before=now + timedelta(days=1)),
        "server_cert_as_client": fleet_pki.server,
    }


@pytest.mark.parametrize(
    "which", ["foreign_ca", "expired", "not_yet_valid", "server_cert_as_client"]
)
def test_relay_refuses_bad_client_certs(fleet_pki: FleetPKI, which: str) -> None:
    client = bad_client_certs(fleet_pki)[which]
    with pytest.raises(ssl.SSLError):
        handshake(fleet_pki.server_context(), fleet_pki.client_context(client))
