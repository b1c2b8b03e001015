"""The fleet CA and certificate issuance."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.ca import CA_LIFETIME, CAError, init_ca, load_ca
from pki.identity import DeviceIdentity, ServiceIdentity, identity_from_cert
from pki.issue import (
    BadCSRError,
    CertificateMismatchError,
    check_issued_certificate,
    issue_server_cert,
    issue_service_cert,
    load_csr,
    sign_device_csr,
)
from pki.keys import WeakKeyError, generate_key
from pki.renewal import build_csr
from pki.serials import SERIAL_BITS
from protocol.ids import new_device_id
from tests.pki_fixtures import FleetPKI


def ext(cert: x509.Certificate, kind: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(kind)


def test_init_ca_is_idempotent_and_protects_the_key(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    ca, created = init_ca(directory)
    assert created
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "ca.pem").stat().st_mode) == 0o644
    before = (directory / "ca.pem").read_bytes(), (directory / "ca.key").read_bytes()
    again, created = init_ca(directory)
    assert not created
    assert again.cert == ca.cert
    assert before == ((directory / "ca.pem").read_bytes(), (directory / "ca.key").read_bytes())
    assert sorted(p.name for p in directory.iterdir()) == ["ca.key", "ca.pem"]


def test_ca_profile(fleet_pki: FleetPKI) -> None:
    cert = fleet_pki.ca.cert
    basic = ext(cert, x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert CA_LIFETIME <= lifetime <= CA_LIFETIME + timedelta(minutes=10)
    assert cert.issuer == cert.subject


def test_incomplete_or_mismatched_ca_is_an_error(tmp_path: Path) -> None:
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    (tmp_path / "a" / "ca.key").unlink()
    with pytest.raises(CAError, match="missing"):
        init_ca(tmp_path / "a")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(CAError, match="does not match"):
        load_ca(tmp_path / "a")


def test_server_cert(fleet_pki: FleetPKI) -> None:
    cert = issue_server_cert(
        fleet_pki.ca, dns_names=["relay.example", "localhost"], ip_addresses=["127.0.0.1", "::1"]
    ).cert
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["relay.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not ext(cert, x509.BasicConstraints).value.ca
    with pytest.raises(ValueError):
        issue_server_cert(fleet_pki.ca)


def test_service_cert(fleet_pki: FleetPKI) -> None:
    cert = issue_service_cert(fleet_pki.ca, "portal").cert
    assert isinstance(identity_from_cert(cert), ServiceIdentity)
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(ValueError):
        issue_service_cert(fleet_pki.ca, "Not A Slug")


def test_device_cert_from_csr(fleet_pki: FleetPKI) -> None:
    key = generate_key()
    device_id = new_device_id()
    now = datetime(2030, 1, 1, tzinfo=UTC)
    cert = sign_device_csr(
        fleet_pki.ca, build_csr(key), device_id=device_id, customer="acme", site="lab", now=now
    )
    identity = identity_from_cert(cert)
    assert isinstance(identity, DeviceIdentity)
    assert (identity.device_id, identity.customer, identity.site) == (device_id, "acme", "lab")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc == now + timedelta(days=90)
    assert cert.not_valid_before_utc < now  # backdated for clock skew
    check_issued_certificate(cert, key.public_key(), fleet_pki.ca.cert, now)


def test_serials_are_random_128_bit(fleet_pki: FleetPKI) -> None:
    serials = {issue_service_cert(fleet_pki.ca, "s").cert.serial_number for _ in range(20)}
    assert len(serials) == 20
    assert all(0 < s < 2**SERIAL_BITS for s in serials)
    assert max(serials).bit_length() > SERIAL_BITS - 8


def csr_for(key: Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        (ec.generate_private_key(ec.SECP256R1()), True),
        (ec.generate_private_key(ec.SECP384R1()), True),
        (rsa.generate_private_key(65537, 3072), True),
        (rsa.generate_private_key(65537, 2048), False),
        (ec.generate_private_key(ec.SECP256K1()), False),
    ],
    ids=["p256", "p384", "rsa3072", "rsa2048", "secp256k1"],
)
def test_key_strength(key: Any, accepted: bool) -> None:
    if accepted:
        load_csr(csr_for(key))
    else:
        with pytest.raises(WeakKeyError):
            load_csr(csr_for(key))


def test_oversized_or_garbage_csr(fleet_pki: FleetPKI) -> None:
    with pytest.raises(BadCSRError):
        load_csr(b"x" * 10_000)
    with pytest.raises(BadCSRError):
        load_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")


def test_check_issued_certificate_refuses_wrong_key_and_wrong_ca(fleet_pki: FleetPKI) -> None:
    mine = fleet_pki.device_cert()
    other_key = generate_key()
    with pytest.raises(CertificateMismatchError, match="not for our key"):
        check_issued_certificate(mine.issued.cert, other_key.public_key(), fleet_pki.ca.cert)
    foreign = fleet_pki.device_cert(foreign=True)
    with pytest.raises(CertificateMismatchError, match="chain"):
        check_issued_certificate(
            foreign.issued.cert, foreign.issued.key.public_key(), fleet_pki.ca.cert
        )
