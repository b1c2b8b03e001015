"""Revoking devices and certificates, and the views the relay caches.

The relay refuses revoked serials and devices at the handshake (HTTP 403) and
closes their open tunnels; it refreshes :func:`revoked_serials` and
:func:`revoked_devices` periodically. A CRL export exists for tools that want one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pki.ca import CertificateAuthority
from protocol.ids import DeviceId
from store.models import Certificate, Device

log = logging.getLogger(__name__)

#: Reasons are free text for humans; keep them to one screen line in listings.
MAX_REASON_LEN = 500
#: How long a CRL is valid: consumers should fetch a fresh one at least daily.
CRL_VALIDITY = timedelta(days=1)


def revoke_device(
    session: Session, device_id: str, *, reason: str, now: datetime | None = None
) -> bool:
    """Revoke a device and all its certificates; False if the device is unknown.

    Idempotent: revoking again keeps the first time and reason.
    """
    now = now or datetime.now(UTC)
    reason = reason[:MAX_REASON_LEN]
    device = session.get(Device, device_id)
    if device is None:
        return False
    if device.revoked_at is None:
        device.revoked_at, device.revoked_reason = now, reason
    session.execute(
        update(Certificate)
        .where(Certificate.device_id == device_id, Certificate.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    log.warning("= revoked device %s: %s", device_id, reason)
    return True


def revoke_certificate(
    session: Session, serial: str, *, reason: str, now: datetime | None = None
) -> bool:
    """Revoke one certificate by hex serial; False if unknown or already revoked."""
    result = session.execute(
        update(Certificate)
        .where(Certificate.serial == serial.lower(), Certificate.revoked_at.is_(None))
        .values(revoked_at=now or datetime.now(UTC), revoked_reason=reason[:MAX_REASON_LEN])
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def revoked_serials(session: Session) -> frozenset[str]:
    """Hex serials of every revoked certificate (the relay's handshake cache)."""
    return frozenset(
        session.scalars(select(Certificate.serial).where(Certificate.revoked_at.is_not(None)))
    )


def revoked_devices(session: Session) -> frozenset[DeviceId]:
    """Ids of every revoked device (covers certificates the store never saw)."""
    ids = session.scalars(select(Device.id).where(Device.revoked_at.is_not(None)))
    return frozenset(DeviceId(d) for d in ids)


def is_device_revoked(session: Session, device_id: str) -> bool:
    """True if the device is revoked or unknown (an unknown device has no right to a cert)."""
    device = session.get(Device, device_id)
    return device is None or device.revoked_at is not None


def export_crl(session: Session, ca: CertificateAuthority, *, now: datetime | None = None) -> bytes:
    """A PEM CRL of every revoked certificate, signed by the CA."""
    now = now or datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
    )
    rows = session.execute(
        select(Certificate.serial, Certificate.revoked_at).where(
            Certificate.revoked_at.is_not(None)
        )
    )
    for serial, revoked_at in rows:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(revoked_at or now)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
