"""The agent's own credentials on disk: device key, device certificate, pinned CA.

Layout of the identity directory (created 0700)::

    device.key   private key, 0600, made on this device, never sent anywhere
    device.pem   certificate issued by the fleet CA (names this device)
    ca.pem       the pinned fleet CA: the only trust anchor for the relay

Renewal swaps key and certificate without ever leaving a mismatched pair
behind: the new key goes to ``device.key.new`` before the request is sent,
the new certificate to ``device.pem.new`` once verified, then both are
renamed key first. :func:`load_identity` completes an interrupted swap.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pki.identity import DeviceIdentity, IdentityError, identity_from_cert
from pki.issue import check_issued_certificate
from pki.keys import generate_key, load_private_key, write_file_atomic, write_private_key
from pki.renewal import RENEW_FRACTION, build_csr, renewal_due_at
from pki.tls import client_context
from pki.wire import decode_response, encode_request

DEVICE_KEY_FILE = "device.key"
DEVICE_CERT_FILE = "device.pem"
CA_FILE = "ca.pem"
PENDING_SUFFIX = ".new"


@dataclass(frozen=True, slots=True)
class IdentityFiles:
    """Where the agent keeps its credentials."""

    directory: Path

    @property
    def key_file(self) -> Path:
        return self.directory / DEVICE_KEY_FILE

    @property
    def cert_file(self) -> Path:
        return self.directory / DEVICE_CERT_FILE

    @property
    def ca_file(self) -> Path:
        return self.directory / CA_FILE

    @property
    def pending_key_file(self) -> Path:
        return self.directory / (DEVICE_KEY_FILE + PENDING_SUFFIX)

    @property
    def pending_cert_file(self) -> Path:
        return self.directory / (DEVICE_CERT_FILE + PENDING_SUFFIX)

    def is_enrolled(self) -> bool:
        """True if a certificate is present (enrolment already happened)."""
        return self.cert_file.exists() or self.pending_cert_file.exists()


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """The loaded, consistent credentials of this device."""

    files: IdentityFiles
    cert: x509.Certificate
    identity: DeviceIdentity

    @property
    def renewal_due_at(self) -> datetime:
        """When to ask for a new certificate (a timer deadline for the agent)."""
        return renewal_due_at(self.cert, RENEW_FRACTION)

    def needs_renewal(self, now: datetime | None = None, fraction: float = RENEW_FRACTION) -> bool:
        """True once at most ``fraction`` of the certificate lifetime remains."""
        return (now or datetime.now(UTC)) >= renewal_due_at(self.cert, fraction)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that presents this identity and trusts only the pinned CA."""
        return client_context(self.files.ca_file, self.files.cert_file, self.files.key_file)


def _finish_pending_swap(files: IdentityFiles) -> None:
    """Complete a renewal interrupted between its two renames (see module docstring)."""
    if files.pending_cert_file.exists():
        if files.pending_key_file.exists():
            os.replace(files.pending_key_file, files.key_file)
        os.replace(files.pending_cert_file, files.cert_file)


def load_identity(directory: Path) -> AgentIdentity:
    """Load and cross-check the credentials in ``directory``.

    Raises ``FileNotFoundError`` if the device is not enrolled, and
    :class:`pki.identity.IdentityError` if key and certificate do not belong
    together or the certificate does not name a device.
    """
    files = IdentityFiles(Path(directory))
    _finish_pending_swap(files)
    cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    key = load_private_key(files.key_file)
    if key.public_key() != cert.public_key():
        raise IdentityError(f"{files.key_file} does not match {files.cert_file}")
    if not files.ca_file.exists():
        raise FileNotFoundError(files.ca_file)
    identity = identity_from_cert(cert)
    if not isinstance(identity, DeviceIdentity):
        raise IdentityError(f"{files.cert_file} is not a device certificate")
    return AgentIdentity(files=files, cert=cert, identity=identity)


def verify_device_certificate(
    cert_pem: bytes,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    now: datetime | None = None,
) -> DeviceIdentity:
    """Check a certificate we were handed: for ``key``, chains to ``ca_cert``, names a device.

    Raises :class:`pki.issue.CertificateMismatchError` or
    :class:`pki.identity.IdentityError`. Callers write nothing unless this passes.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise IdentityError("the certificate received is not PEM") from None
    check_issued_certificate(cert, key.public_key(), ca_cert, now)
    identity = identity_from_cert(cert)
    if not isinstance(identity, DeviceIdentity):
        raise IdentityError("the certificate received does not name a device")
    return identity


def begin_renewal(agent: AgentIdentity) -> str:
    """Make the next key (written 0600 before anything is sent) and the renewal request.

    Send the returned JSON text on the renewal channel; pass the answer to
    :func:`complete_renewal`.
    """
    key = generate_key()
    write_private_key(agent.files.pending_key_file, key)
    return encode_request(build_csr(key))


def complete_renewal(
    agent: AgentIdentity, response: bytes | str, *, now: datetime | None = None
) -> AgentIdentity:
    """Check the relay's answer and switch to the new key and certificate.

    Raises :class:`pki.wire.Refused` (the relay said no, e.g. ``revoked``),
    :class:`pki.wire.MalformedResponse`, or a verification error; the current
    credentials stay in place in every failure case.
    """
    files = agent.files
    issued = decode_response(response)
    key = load_private_key(files.pending_key_file)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError("pending key is not an EC key")
    ca_cert = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
    renewed = verify_device_certificate(issued.certificate_pem, key, ca_cert, now=now)
    if renewed.device_id != agent.identity.device_id:
        raise IdentityError("the renewed certificate names another device")
    write_file_atomic(files.pending_cert_file, issued.certificate_pem)
    _finish_pending_swap(files)
    return load_identity(files.directory)
