"""Certificate renewal over the tunnel, sans-I/O: when to renew, and how the relay answers.

The agent asks when a third of its certificate's lifetime remains (so a device
that is offline for a while still has weeks to come back). The relay answers
from the *authenticated* peer identity of the tunnel: the new certificate names
the same device, with customer/site from the database, and revoked devices get
nothing.

The agent imports this module for its side only, so the server side imports
SQLAlchemy and the store inside its functions: the agent never loads them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pki.ca import CertificateAuthority
from pki.identity import DeviceIdentity
from pki.issue import DEFAULT_DEVICE_LIFETIME, BadCSRError, load_csr
from pki.keys import WeakKeyError
from pki.serials import serial_hex
from pki.wire import ErrorCode, Refused, decode_request, encode_issued, encode_refusal

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

#: Renew when this fraction of the lifetime remains (decision 0002).
RENEW_FRACTION = 1 / 3


def renewal_due_at(cert: x509.Certificate, fraction: float = RENEW_FRACTION) -> datetime:
    """When renewal becomes due: the agent arms its timer for this instant."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return end - (end - start) * fraction


def needs_renewal(cert: x509.Certificate, now: datetime, fraction: float = RENEW_FRACTION) -> bool:
    """True once at most ``fraction`` of the certificate's lifetime remains."""
    return now >= renewal_due_at(cert, fraction)


def build_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM CSR for ``key``. Its subject is a placeholder: the server ignores it."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "outlink-agent")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def renew(
    session: Session,
    ca: CertificateAuthority,
    identity: DeviceIdentity,
    csr_pem: bytes,
    *,
    lifetime: timedelta = DEFAULT_DEVICE_LIFETIME,
    now: datetime | None = None,
) -> x509.Certificate:
    """Issue a new certificate for the device that ``identity`` (the peer cert) names.

    Raises :class:`Refused` with ``revoked`` if the device or the presented
    certificate is revoked or unknown, ``bad_csr``/``key_too_weak`` for the CSR.
    """
    from pki.fleet import certify_device
    from store.models import Certificate, Device

    try:
        public_key = load_csr(csr_pem).public_key()
    except BadCSRError as exc:
        raise Refused(ErrorCode.BAD_CSR, str(exc)) from None
    except WeakKeyError as exc:
        raise Refused(ErrorCode.KEY_TOO_WEAK, str(exc)) from None
    device = session.get(Device, identity.device_id)
    presented = session.get(Certificate, identity.serial)
    if (
        device is None
        or device.revoked_at is not None
        or (presented is not None and presented.revoked_at is not None)
    ):
        raise Refused(ErrorCode.REVOKED, "this device may not renew its certificate")
    cert = certify_device(session, ca, device, public_key, lifetime=lifetime, now=now)
    log.info(
        "= renewed device %s: serial %s -> %s",
        identity.device_id,
        identity.serial,
        serial_hex(cert.serial_number),
    )
    return cert


def handle_renewal_request(
    sessions: Engine | sessionmaker[Session],
    ca: CertificateAuthority,
    identity: DeviceIdentity,
    request: bytes | str,
    *,
    lifetime: timedelta = DEFAULT_DEVICE_LIFETIME,
    now: datetime | None = None,
) -> bytes:
    """Answer one renewal message from an authenticated device; never raises.

    Blocking (database + signing): call it via ``asyncio.to_thread``.
    """
    from store.db import session_scope

    try:
        req = decode_request(request, need_token=False)
        with session_scope(sessions) as session:
            cert = renew(session, ca, identity, req.csr_pem, lifetime=lifetime, now=now)
        return encode_issued(
            identity.device_id, cert.public_bytes(serialization.Encoding.PEM), ca.cert_pem
        )
    except Refused as refusal:
        log.info("! renewal refused for %s: %s", identity.device_id, refusal.code)
        return encode_refusal(refusal)
    except Exception:
        log.exception("! renewal failed for %s", identity.device_id)
        return encode_refusal(Refused(ErrorCode.INTERNAL_ERROR, "renewal failed; try later"))
