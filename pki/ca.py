"""The fleet certificate authority: one self-signed ECDSA P-256 root, kept in a directory.

Files: ``ca.pem`` (certificate, world-readable: every agent pins it) and
``ca.key`` (private key, mode 0600). ``pathlen 0``: the CA signs leaves only,
so a stolen leaf key can never mint further certificates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki.keys import generate_key, load_private_key, write_file_atomic, write_private_key
from pki.serials import new_serial

log = logging.getLogger(__name__)

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
#: Ten years: replacing the root means re-pinning it on every device, so it must outlive them.
CA_LIFETIME = timedelta(days=3650)
CA_COMMON_NAME = "Outlink Fleet CA"
#: Backdate validity so a device whose clock runs slightly behind still accepts new certs.
CLOCK_SKEW = timedelta(minutes=5)


class CAError(RuntimeError):
    """The CA directory is missing, incomplete or unreadable."""


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """The fleet CA in memory: its certificate and signing key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM (what agents pin)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)


def create_ca(
    *,
    common_name: str = CA_COMMON_NAME,
    lifetime: timedelta = CA_LIFETIME,
    now: datetime | None = None,
) -> CertificateAuthority:
    """Make a new CA in memory (tests use this for foreign CAs; see :func:`init_ca`)."""
    now = now or datetime.now(UTC)
    key = generate_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Outlink"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


def init_ca(directory: Path) -> tuple[CertificateAuthority, bool]:
    """Create the CA in ``directory`` unless it exists; return it and whether it was created.

    Idempotent, and never overwrites an existing CA key: a half-present CA
    (one file without the other) is an error for a human to look at.
    """
    directory = Path(directory)
    cert_file, key_file = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if cert_file.exists() or key_file.exists():
        return load_ca(directory), False
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = create_ca()
    write_private_key(key_file, ca.key)  # key first: a cert without its key is useless
    write_file_atomic(cert_file, ca.cert_pem)
    log.info("= created fleet CA in %s", directory)
    return ca, True


def load_ca(directory: Path) -> CertificateAuthority:
    """Load ``ca.pem`` + ``ca.key`` and check that they belong together."""
    directory = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
        key = load_private_key(directory / CA_KEY_FILE)
    except FileNotFoundError as exc:
        raise CAError(f"incomplete CA directory {directory}: {exc.filename} missing") from None
    except ValueError as exc:
        raise CAError(f"unreadable CA in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CAError(f"{CA_KEY_FILE} does not match {CA_CERT_FILE} in {directory}")
    return CertificateAuthority(cert=cert, key=key)
