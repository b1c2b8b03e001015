"""Fleet records the PKI keeps: customers/sites, devices, and every issued certificate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from sqlalchemy import select
from sqlalchemy.orm import Session

from pki.ca import CertificateAuthority
from pki.identity import is_slug
from pki.issue import DEFAULT_DEVICE_LIFETIME, issue_device_cert
from pki.serials import serial_hex
from protocol.ids import DeviceId, new_device_id
from store.models import Certificate, Customer, Device, Site


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device as listed for operators (plain data, safe to use outside the session)."""

    device_id: DeviceId
    customer: str
    site: str
    enrolled_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None


def ensure_site(
    session: Session,
    customer: str,
    site: str,
    *,
    customer_name: str | None = None,
    site_name: str | None = None,
) -> Site:
    """Return the site ``customer/site``, creating the customer and site if missing.

    Names default to the slugs; an existing record's name is left unchanged.
    """
    for slug in (customer, site):
        if not is_slug(slug):
            raise ValueError(f"bad slug {slug!r}: use lowercase letters, digits and '-'")
    cust = session.scalar(select(Customer).where(Customer.slug == customer))
    if cust is None:
        cust = Customer(slug=customer, name=customer_name or customer)
        session.add(cust)
        session.flush()
    row = session.scalar(select(Site).where(Site.customer_id == cust.id, Site.slug == site))
    if row is None:
        row = Site(customer_id=cust.id, slug=site, name=site_name or site, customer=cust)
        session.add(row)
        session.flush()
    return row


def create_device(session: Session, site: Site, *, now: datetime | None = None) -> Device:
    """Register a new device at ``site`` under a fresh server-chosen id."""
    device = Device(
        id=new_device_id(),
        customer_id=site.customer_id,
        site_id=site.id,
        enrolled_at=now or datetime.now(UTC),
    )
    session.add(device)
    session.flush()
    return device


def record_certificate(
    session: Session,
    cert: x509.Certificate,
    kind: str,
    *,
    device_id: str | None = None,
    service_name: str | None = None,
    now: datetime | None = None,
) -> Certificate:
    """Remember an issued certificate so it can be listed and revoked by serial."""
    row = Certificate(
        serial=serial_hex(cert.serial_number),
        device_id=device_id,
        service_name=service_name,
        kind=kind,
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issued_at=now or datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    return row


def list_devices(session: Session) -> list[DeviceRecord]:
    """All devices, oldest enrolment first."""
    rows = session.execute(
        select(Device, Customer.slug, Site.slug)
        .join(Customer, Device.customer_id == Customer.id)
        .join(Site, Device.site_id == Site.id)
        .order_by(Device.enrolled_at, Device.id)
    )
    return [
        DeviceRecord(
            device_id=DeviceId(d.id),
            customer=c,
            site=s,
            enrolled_at=d.enrolled_at,
            revoked_at=d.revoked_at,
            revoked_reason=d.revoked_reason,
        )
        for d, c, s in rows
    ]


def certify_device(
    session: Session,
    ca: CertificateAuthority,
    device: Device,
    public_key: CertificatePublicKeyTypes,
    *,
    lifetime: timedelta = DEFAULT_DEVICE_LIFETIME,
    now: datetime | None = None,
) -> x509.Certificate:
    """Issue and record a certificate for ``device`` as the database knows it.

    Customer and site come from the device's rows, never from the requester:
    enrolment and renewal both go through here.
    """
    cert = issue_device_cert(
        ca,
        public_key,
        device_id=DeviceId(device.id),
        customer=device.customer.slug,
        site=device.site.slug,
        lifetime=lifetime,
        now=now,
    )
    record_certificate(session, cert, "device", device_id=device.id, now=now)
    return cert
