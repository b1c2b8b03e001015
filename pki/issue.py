"""Issuing leaf certificates from the fleet CA: relay servers, services, devices.

Device certificates are built from the server's records only: the CSR proves
possession of the key and nothing else -- its subject and SANs are ignored.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from pki.ca import CLOCK_SKEW, CertificateAuthority
from pki.identity import device_uris, is_slug, service_uri
from pki.keys import (
    PUBLIC_FILE_MODE,
    check_public_key,
    generate_key,
    write_file_atomic,
    write_private_key,
)
from pki.serials import new_serial
from protocol.ids import DeviceId

log = logging.getLogger(__name__)

#: Devices renew over the tunnel long before expiry, so a short life limits a stolen key's use.
DEFAULT_DEVICE_LIFETIME = timedelta(days=90)
#: Services and relays are renewed by operators; a year matches common operational practice.
DEFAULT_SERVICE_LIFETIME = timedelta(days=365)
DEFAULT_SERVER_LIFETIME = timedelta(days=365)
#: A CSR is a few hundred bytes (EC) to ~3 KiB (RSA 8192); anything bigger is not a CSR.
MAX_CSR_BYTES = 8192


class BadCSRError(ValueError):
    """The CSR is not parseable PEM or its self-signature does not verify."""


class CertificateMismatchError(ValueError):
    """An issued certificate is not for our key or does not chain to the pinned CA."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate together with the private key generated for it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, cert_file: Path, key_file: Path) -> None:
        """Write the key (0600) then the certificate, each atomically."""
        write_private_key(key_file, self.key)
        write_file_atomic(cert_file, self.cert_pem, PUBLIC_FILE_MODE)


def _leaf(
    ca: CertificateAuthority,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    san: list[x509.GeneralName],
    eku: x509.ObjectIdentifier,
    lifetime: timedelta,
    now: datetime | None,
    not_before: datetime | None,
) -> x509.Certificate:
    """The one place leaf certificates are built: same profile for every kind."""
    now = now or datetime.now(UTC)
    # Explicit not_before (tests: not-yet-valid certs) shifts the whole validity window.
    start, end = (
        (now - CLOCK_SKEW, now + lifetime)
        if not_before is None
        else (not_before, not_before + lifetime)
    )
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def issue_server_cert(
    ca: CertificateAuthority,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    lifetime: timedelta = DEFAULT_SERVER_LIFETIME,
    now: datetime | None = None,
    not_before: datetime | None = None,
) -> IssuedCertificate:
    """A relay's TLS server certificate (EKU serverAuth) for the given names and addresses."""
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cn = dns_names[0] if dns_names else ip_addresses[0]
    key = generate_key()
    cert = _leaf(
        ca,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        key.public_key(),
        san,
        ExtendedKeyUsageOID.SERVER_AUTH,
        lifetime,
        now,
        not_before,
    )
    names = [*dns_names, *ip_addresses]
    log.info("= issued server cert serial=%x for %s", cert.serial_number, names)
    return IssuedCertificate(cert=cert, key=key)


def issue_service_cert(
    ca: CertificateAuthority,
    name: str,
    *,
    lifetime: timedelta = DEFAULT_SERVICE_LIFETIME,
    now: datetime | None = None,
    not_before: datetime | None = None,
) -> IssuedCertificate:
    """A client certificate for an internal service (e.g. ``portal``), EKU clientAuth."""
    if not is_slug(name):
        raise ValueError(f"bad service name {name!r}: use lowercase letters, digits and '-'")
    key = generate_key()
    cert = _leaf(
        ca,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"service:{name}")]),
        key.public_key(),
        [x509.UniformResourceIdentifier(service_uri(name))],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        lifetime,
        now,
        not_before,
    )
    log.info("= issued service cert serial=%x for %s", cert.serial_number, name)
    return IssuedCertificate(cert=cert, key=key)


def issue_device_cert(
    ca: CertificateAuthority,
    public_key: CertificatePublicKeyTypes,
    *,
    device_id: DeviceId,
    customer: str,
    site: str,
    lifetime: timedelta = DEFAULT_DEVICE_LIFETIME,
    now: datetime | None = None,
    not_before: datetime | None = None,
) -> x509.Certificate:
    """A device certificate naming exactly the given (server-chosen) identity."""
    check_public_key(public_key)
    if not (is_slug(customer) and is_slug(site)):
        raise ValueError("customer and site must be slugs")
    return _leaf(
        ca,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]),
        public_key,
        [x509.UniformResourceIdentifier(u) for u in device_uris(device_id, customer, site)],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        lifetime,
        now,
        not_before,
    )


def load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """Parse a CSR and check its self-signature and key strength.

    Raises :class:`BadCSRError` (not a valid signed CSR) or
    :class:`pki.keys.WeakKeyError` (a valid CSR for a key we do not accept).
    """
    if len(csr_pem) > MAX_CSR_BYTES:
        raise BadCSRError(f"CSR larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise BadCSRError("not a PEM certificate signing request") from None
    check_public_key(public_key)
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise BadCSRError("CSR signature does not verify")
    return csr


def sign_device_csr(
    ca: CertificateAuthority,
    csr_pem: bytes,
    *,
    device_id: DeviceId,
    customer: str,
    site: str,
    lifetime: timedelta = DEFAULT_DEVICE_LIFETIME,
    now: datetime | None = None,
) -> x509.Certificate:
    """Certify the CSR's key for the identity the server chose; the CSR's names are ignored."""
    csr = load_csr(csr_pem)
    return issue_device_cert(
        ca,
        csr.public_key(),
        device_id=device_id,
        customer=customer,
        site=site,
        lifetime=lifetime,
        now=now,
    )


def check_issued_certificate(
    cert: x509.Certificate,
    public_key: CertificatePublicKeyTypes,
    ca_cert: x509.Certificate,
    now: datetime | None = None,
) -> None:
    """Make sure a certificate we were handed is for our key and chains to the pinned CA.

    Raises :class:`CertificateMismatchError`. Used by the agent after enrolment
    and renewal, before it writes anything to disk.
    """
    if cert.public_key() != public_key:
        raise CertificateMismatchError("certificate is not for our key")
    verifier = (
        PolicyBuilder()
        .store(Store([ca_cert]))
        .time(now or datetime.now(UTC))
        .build_client_verifier()
    )
    try:
        verifier.verify(cert, [])
    except VerificationError as exc:
        raise CertificateMismatchError(f"certificate does not chain to the CA: {exc}") from None
