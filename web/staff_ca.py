"""The staff CA: a second CA, separate from the fleet CA, for people rather than devices.

It signs the portal's own TLS server certificate (staff trust one CA for the
portal) and staff client certificates for certificate login. It is never trusted
by relays or agents, so nothing it signs can pose as a device, a relay or a
service; and the fleet CA is never trusted for staff login.

Staff certificates: CN = username, SAN URI ``urn:outlink:staff:<username>``,
EKU clientAuth, one year. The user row pins the certificate's fingerprint.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.ca import CA_CERT_FILE, CA_KEY_FILE, CLOCK_SKEW, CertificateAuthority, create_ca, load_ca
from pki.issue import IssuedCertificate, issue_server_cert
from pki.keys import PRIVATE_FILE_MODE, generate_key, write_file_atomic, write_private_key
from pki.serials import new_serial
from web.certauth import STAFF_URN

log = logging.getLogger(__name__)

STAFF_CA_NAME = "Outlink Staff CA"
STAFF_CERT_LIFETIME = timedelta(days=365)


def ensure_staff_ca(directory: Path) -> tuple[CertificateAuthority, bool]:
    """Load the staff CA from ``directory``, creating it first if absent."""
    directory = Path(directory)
    if (directory / CA_CERT_FILE).exists() or (directory / CA_KEY_FILE).exists():
        return load_ca(directory), False
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = create_ca(common_name=STAFF_CA_NAME)
    write_private_key(directory / CA_KEY_FILE, ca.key)
    write_file_atomic(directory / CA_CERT_FILE, ca.cert_pem)
    log.info("= created staff CA in %s", directory)
    return ca, True


def ensure_server_cert(
    ca: CertificateAuthority, cert_file: Path, key_file: Path, names: list[str]
) -> bool:
    """Issue the portal's TLS certificate from the staff CA unless one is there already."""
    if cert_file.exists() and key_file.exists():
        return False
    ips = [n for n in names if n.replace(".", "").isdigit() or ":" in n]
    dns = [n for n in names if n not in ips]
    cert_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    issue_server_cert(ca, dns_names=dns, ip_addresses=ips).write(cert_file, key_file)
    return True


def issue_staff_cert(
    ca: CertificateAuthority, username: str, now: datetime | None = None
) -> IssuedCertificate:
    """A client certificate naming ``username`` (key generated here, handed to the person)."""
    now = now or datetime.now(UTC)
    key = generate_key()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Outlink staff"),
                    x509.NameAttribute(NameOID.COMMON_NAME, username),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + STAFF_CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(STAFF_URN + username)]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return IssuedCertificate(cert=cert, key=key)


def write_pkcs12(
    path: Path, issued: IssuedCertificate, ca: CertificateAuthority, username: str, password: str
) -> None:
    """A password-protected ``.p12`` bundle, the format browsers import."""
    data = pkcs12.serialize_key_and_certificates(
        username.encode(),
        issued.key,
        issued.cert,
        [ca.cert],
        BestAvailableEncryption(password.encode()),
    )
    write_file_atomic(path, data, PRIVATE_FILE_MODE)
