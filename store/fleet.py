"""Queries across the fleet tables of `store.models` that are not one feature's own."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Customer, Device, Presence, Site


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
