"""Who a certificate names: a device (id, customer, site) or a service (name).

Identity lives in the certificate only, never in anything a peer claims.
Device certs: CN = device id, SAN URIs ``urn:outlink:device:<uuid4>``,
``urn:outlink:customer:<slug>``, ``urn:outlink:site:<slug>``. Service certs:
SAN URI ``urn:outlink:service:<name>``. Parsing works both on a
``cryptography`` certificate and on the dict ``ssl.SSLObject.getpeercert()``
returns (what a server sees after the TLS layer verified the chain).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from pki.serials import serial_hex
from protocol.ids import DeviceId, parse_device_id

URN_DEVICE = "urn:outlink:device:"
URN_CUSTOMER = "urn:outlink:customer:"
URN_SITE = "urn:outlink:site:"
URN_SERVICE = "urn:outlink:service:"

#: Customer, site and service names: lowercase DNS-label style, so they are safe in URNs,
#: URLs, file names and log lines without escaping.
SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class IdentityError(ValueError):
    """A certificate does not carry exactly one well-formed Outlink identity."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device as its certificate names it; ``serial`` is lowercase hex."""

    device_id: DeviceId
    customer: str
    site: str
    serial: str


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """An internal service (e.g. the portal) as its certificate names it."""

    name: str
    serial: str


Identity = DeviceIdentity | ServiceIdentity


def is_slug(value: str) -> bool:
    """True if ``value`` is a valid customer/site/service name."""
    return SLUG_RE.fullmatch(value) is not None


def device_uris(device_id: DeviceId, customer: str, site: str) -> list[str]:
    """The SAN URIs of a device certificate."""
    return [URN_DEVICE + device_id, URN_CUSTOMER + customer, URN_SITE + site]


def service_uri(name: str) -> str:
    """The SAN URI of a service certificate."""
    return URN_SERVICE + name


def identity_from_cert(cert: x509.Certificate) -> Identity:
    """Parse the identity of a certificate; raise :class:`IdentityError` if there is none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError("certificate has no subjectAltName") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return _identity(uris, cns, serial_hex(cert.serial_number))


def identity_from_peercert(peercert: Mapping[str, Any] | None) -> Identity:
    """Parse the identity from ``SSLObject.getpeercert()`` (the verified, decoded form)."""
    if not peercert:
        raise IdentityError("no verified peer certificate")
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    subject = peercert.get("subject", ())
    cns = [value for rdn in subject for key, value in rdn if key == "commonName"]
    try:
        serial = serial_hex(int(peercert["serialNumber"], 16))
    except (KeyError, TypeError, ValueError):
        raise IdentityError("peer certificate has no serial number") from None
    return _identity(uris, cns, serial)


def _one(uris: Iterable[str], prefix: str) -> str | None:
    values = [u[len(prefix) :] for u in uris if u.startswith(prefix)]
    if len(values) > 1:
        raise IdentityError(f"more than one {prefix}* URI")
    return values[0] if values else None


def _slug(value: str | None, what: str) -> str:
    if value is None or not is_slug(value):
        raise IdentityError(f"missing or malformed {what}")
    return value


def _identity(uris: list[str], cns: list[str], serial: str) -> Identity:
    device = _one(uris, URN_DEVICE)
    service = _one(uris, URN_SERVICE)
    if device is not None and service is not None:
        raise IdentityError("certificate names both a device and a service")
    if service is not None:
        return ServiceIdentity(name=_slug(service, "service name"), serial=serial)
    if device is None:
        raise IdentityError("certificate names no device and no service")
    try:
        device_id = parse_device_id(device)
    except ValueError as exc:
        raise IdentityError(str(exc)) from None
    if cns != [device_id]:
        raise IdentityError("certificate CN does not match its device URI")
    return DeviceIdentity(
        device_id=device_id,
        customer=_slug(_one(uris, URN_CUSTOMER), "customer"),
        site=_slug(_one(uris, URN_SITE), "site"),
        serial=serial,
    )
