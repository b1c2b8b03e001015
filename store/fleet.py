"""Queries across the fleet tables of `store.models` that are not one feature's own."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, not_, select
from sqlalchemy.orm import Session

from store.models import Customer, Device, Presence, Site

#: (online now, last seen) of one device.
PresenceNow = tuple[bool, datetime | None]


def offline_devices(
    session: Session, relay_id: str
) -> list[tuple[str, str, str, str | None, datetime | None]]:
    """Devices whose presence row names `relay_id` and are offline: (device, customer,
    site, model, disconnected_at). Each relay evaluates offline rules for the devices
    it held last, so two relays do not both fire for one device."""
    rows = session.execute(
        select(Device.id, Customer.slug, Site.slug, Device.model, Presence.disconnected_at)
        .join(Presence, Presence.device_id == Device.id)
        .join(Customer, Customer.id == Device.customer_id)
        .join(Site, Site.id == Device.site_id)
        .where(Presence.relay_id == relay_id, Presence.online.is_(False))
        .where(Device.revoked_at.is_(None))
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


def online(stale_before: datetime) -> ColumnElement[bool]:
    """SQL truth of "online now", the one rule every page and API uses: the device's relay
    says so, refreshed ``last_seen`` after `stale_before` (relays refresh it every 60 s,
    so a crashed relay's devices turn offline by themselves), and it is not revoked."""
    return and_(
        Presence.online.is_(True),
        Presence.last_seen >= stale_before,
        Device.revoked_at.is_(None),
    )


def unreachable_devices(
    session: Session, *, devices: ColumnElement[bool], stale_before: datetime, limit: int
) -> dict[str, datetime | None]:
    """Devices matching `devices` (a scope) that are not revoked and not `online`, never
    connected ones included, most recently seen first: device id -> last seen."""
    rows = session.execute(
        select(Device.id, Presence.last_seen)
        .outerjoin(Presence, Presence.device_id == Device.id)
        .where(devices, Device.revoked_at.is_(None))
        .where(not_(func.coalesce(online(stale_before), False)))
        .order_by(Presence.last_seen.desc().nulls_last())  # PostgreSQL sorts NULL first
        .limit(limit)
    )
    return {device_id: seen for device_id, seen in rows}


def presence_of(
    session: Session, ids: list[str], *, devices: ColumnElement[bool], stale_before: datetime
) -> dict[str, PresenceNow]:
    """Online state and last seen of the devices among `ids` that match `devices` (a
    scope); the others are left out, so a caller cannot learn they exist."""
    if not ids:
        return {}
    rows = session.execute(
        select(Device.id, online(stale_before), Presence.last_seen)
        .outerjoin(Presence, Presence.device_id == Device.id)
        .where(devices, Device.id.in_(ids))
    )
    return {device_id: (bool(is_online), seen) for device_id, is_online, seen in rows}


def devices_with_places(
    session: Session, ids: list[str], *, devices: ColumnElement[bool]
) -> list[tuple[Device, str, str]]:
    """The devices among `ids` that match `devices` (a scope), with customer and site names."""
    if not ids:
        return []
    rows = session.execute(
        select(Device, Customer.name, Site.name)
        .join(Customer, Customer.id == Device.customer_id)
        .join(Site, Site.id == Device.site_id)
        .where(devices, Device.id.in_(ids))
    )
    return [(device, customer, site) for device, customer, site in rows]


def hostnames(session: Session, ids: list[str]) -> dict[str, str | None]:
    """Host names by device id, for lists that show rows already read within scope."""
    if not ids:
        return {}
    rows = session.execute(select(Device.id, Device.hostname).where(Device.id.in_(ids)))
    return {device_id: hostname for device_id, hostname in rows}
