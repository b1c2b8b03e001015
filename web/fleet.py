"""The fleet at a glance: customers, sites, devices with presence, and the device page.

Presence comes from the shared ``presence`` table that relays write. A row
whose ``last_seen`` is older than ``presence_stale_seconds`` counts as offline
whatever its flag says (its relay died without marking it). Every query goes
through :mod:`web.scope`. Device fields (hostname, model, agent version) come
from agents and are hostile: templates only ever print them as escaped text.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import ColumnElement, Select, and_, case, func, not_, or_, select
from werkzeug.wrappers import Response

from pki.revocation import revoke_device
from store.fleet import online
from store.models import Certificate, Customer, Device, Presence, Site
from store.portal import AuditEvent
from web.authz import Perm, current_user, requires
from web.db import db
from web.forms import RevokeForm
from web.inputs import DB_ID_MAX, query_number
from web.paging import page_number, paginate
from web.recorder import record
from web.relay import relay_link
from web.scope import current_scope, get_or_404, scoped

log = logging.getLogger(__name__)

bp = Blueprint("fleet", __name__)

STATUSES = ("online", "offline", "revoked")
#: Search text longer than this is not a search, it is an attack on the LIKE engine.
MAX_QUERY_LEN = 100
#: Device ids are uuids; longer "ids" are refused before they reach the database.
DEVICE_ID_MAX = 36


def stale_before() -> datetime:
    """Presence refreshed before this is stale (``presence_stale_seconds``)."""
    stale = current_app.config["OUTLINK"].presence_stale_seconds
    return datetime.now(UTC) - timedelta(seconds=stale)


def online_clause() -> ColumnElement[bool]:
    """`store.fleet.online` with this portal's staleness setting."""
    return online(stale_before())


def device_rows() -> Select[Any]:
    """Scoped devices with customer, site and presence columns, ready for filters."""
    return (
        scoped(
            Device,
            Device,
            Customer.name.label("customer_name"),
            Site.name.label("site_name"),
            online_clause().label("is_online"),
            Presence.last_seen,
            Presence.agent_version,
        )
        .join(Customer, Device.customer_id == Customer.id)
        .join(Site, Device.site_id == Site.id)
        .outerjoin(Presence, Presence.device_id == Device.id)
    )


def device_filters() -> dict[str, Any]:
    """The list's filters from the query string, normalised (bad values are dropped)."""
    status = request.args.get("status", "")
    return {
        "q": request.args.get("q", "").strip()[:MAX_QUERY_LEN],
        "customer": query_number("customer", 1, DB_ID_MAX),
        "site": query_number("site", 1, DB_ID_MAX),
        "status": status if status in STATUSES else "",
    }


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def filtered_devices(filters: dict[str, Any]) -> Select[Any]:
    """Apply search and filters on top of the scope (never instead of it)."""
    stmt = device_rows()
    if filters["q"]:
        like = "%" + _escape_like(filters["q"]) + "%"
        stmt = stmt.where(
            or_(
                Device.hostname.ilike(like, escape="\\"),
                Device.model.ilike(like, escape="\\"),
                Device.id.like(_escape_like(filters["q"].lower()) + "%", escape="\\"),
                Customer.name.ilike(like, escape="\\"),
                Site.name.ilike(like, escape="\\"),
            )
        )
    if filters["customer"] is not None:
        stmt = stmt.where(Device.customer_id == filters["customer"])
    if filters["site"] is not None:
        stmt = stmt.where(Device.site_id == filters["site"])
    if filters["status"] == "online":
        stmt = stmt.where(online_clause())
    elif filters["status"] == "offline":
        stmt = stmt.where(not_(func.coalesce(online_clause(), False)), Device.revoked_at.is_(None))
    elif filters["status"] == "revoked":
        stmt = stmt.where(Device.revoked_at.is_not(None))
    return stmt.order_by(Customer.name, Site.name, Device.hostname, Device.id)


@bp.route("/")
@requires(Perm.DEVICE_VIEW)
def overview() -> str:
    online = func.sum(case((online_clause(), 1), else_=0))
    revoked = func.sum(case((Device.revoked_at.is_not(None), 1), else_=0))
    per_customer = db.session.execute(
        scoped(
            Device,
            Customer.id,
            Customer.name,
            func.count(Device.id).label("devices"),
            online.label("online"),
            revoked.label("revoked"),
        )
        .join(Customer, Device.customer_id == Customer.id)
        .outerjoin(Presence, Presence.device_id == Device.id)
        .group_by(Customer.id, Customer.name)
        .order_by(Customer.name)
    ).all()
    totals = {
        "devices": sum(r.devices for r in per_customer),
        "online": sum(r.online or 0 for r in per_customer),
        "revoked": sum(r.revoked or 0 for r in per_customer),
        "customers": len(per_customer),
    }
    totals["offline"] = totals["devices"] - totals["online"] - totals["revoked"]
    return render_template(
        "fleet/overview.html",
        totals=totals,
        customers=per_customer[:20],
        more_customers=len(per_customer) > 20,
    )


@bp.route("/customers")
@requires(Perm.DEVICE_VIEW)
def customers() -> str:
    q = request.args.get("q", "").strip()[:MAX_QUERY_LEN]
    device_scope = current_scope().devices()
    counts = (
        select(
            Device.customer_id,
            func.count(Device.id).label("devices"),
            func.sum(case((online_clause(), 1), else_=0)).label("online"),
        )
        .outerjoin(Presence, Presence.device_id == Device.id)
        .where(device_scope)
        .group_by(Device.customer_id)
        .subquery()
    )
    stmt = (
        scoped(
            Customer,
            Customer,
            func.coalesce(counts.c.devices, 0).label("devices"),
            func.coalesce(counts.c.online, 0).label("online"),
        )
        .outerjoin(counts, counts.c.customer_id == Customer.id)
        .order_by(Customer.name)
    )
    if q:
        like = "%" + _escape_like(q) + "%"
        stmt = stmt.where(
            or_(Customer.name.ilike(like, escape="\\"), Customer.slug.ilike(like, escape="\\"))
        )
    page = paginate(db.session, stmt, current_app.config["OUTLINK"].page_size, page_number())
    return render_template("fleet/customers.html", page=page, q=q)


@bp.route("/customers/<int:customer_id>")
@requires(Perm.DEVICE_VIEW)
def customer(customer_id: int) -> str:
    row = get_or_404(Customer, customer_id)
    sites = db.session.execute(
        scoped(
            Site,
            Site,
            func.count(Device.id).label("devices"),
            func.sum(case((online_clause(), 1), else_=0)).label("online"),
        )
        .outerjoin(Device, and_(Device.site_id == Site.id, current_scope().devices()))
        .outerjoin(Presence, Presence.device_id == Device.id)
        .where(Site.customer_id == row.id)
        .group_by(Site.id)
        .order_by(Site.name)
    ).all()
    return render_template("fleet/customer.html", customer=row, sites=sites)


@bp.route("/sites/<int:site_id>")
@requires(Perm.DEVICE_VIEW)
def site(site_id: int) -> str:
    row = get_or_404(Site, site_id)
    filters = {"q": "", "customer": None, "site": row.id, "status": ""}
    page = paginate(
        db.session,
        filtered_devices(filters),
        current_app.config["OUTLINK"].page_size,
        page_number(),
    )
    return render_template("fleet/site.html", site=row, page=page, filters=filters)


@bp.route("/devices")
@requires(Perm.DEVICE_VIEW)
def devices() -> str:
    filters = device_filters()
    page = paginate(
        db.session,
        filtered_devices(filters),
        current_app.config["OUTLINK"].page_size,
        page_number(),
    )
    customer_choices = db.session.execute(
        scoped(Customer, Customer.id, Customer.name).order_by(Customer.name)
    ).all()
    site_choices = (
        db.session.execute(
            scoped(Site, Site.id, Site.name)
            .where(Site.customer_id == filters["customer"])
            .order_by(Site.name)
        ).all()
        if filters["customer"] is not None
        else []
    )
    return render_template(
        "fleet/devices.html",
        page=page,
        filters=filters,
        customer_choices=customer_choices,
        site_choices=site_choices,
    )


def load_device(device_id: str) -> Device:
    """The in-scope device ``device_id`` or 404 (any string is accepted, none leaks)."""
    if len(device_id) > DEVICE_ID_MAX:
        return get_or_404(Device, "")
    return get_or_404(Device, device_id)


@bp.route("/devices/<device_id>")
@requires(Perm.DEVICE_VIEW)
def device(device_id: str) -> str:
    row = load_device(device_id)
    presence = db.session.get(Presence, row.id)
    online = bool(
        presence
        and presence.online
        and presence.last_seen
        and presence.last_seen >= stale_before()
        and row.revoked_at is None
    )
    certificates = (
        db.session.execute(
            select(Certificate)
            .where(Certificate.device_id == row.id)
            .order_by(Certificate.issued_at.desc())
            .limit(10)
        )
        .scalars()
        .all()
    )
    user = current_user()
    events = (
        db.session.execute(
            scoped(AuditEvent)
            .where(AuditEvent.device_id == row.id)
            .order_by(AuditEvent.id.desc())
            .limit(10)
        )
        .scalars()
        .all()
        if user.can(Perm.AUDIT_READ)
        else []
    )
    record(
        "device.view",
        device_id=row.id,
        customer_id=row.customer_id,
        site_id=row.site_id,
        summary=f"viewed device {row.id}",
    )
    db.session.commit()
    return render_template(
        "fleet/device.html",
        device=row,
        presence=presence,
        online=online,
        certificates=certificates,
        events=events,
        revoke_form=RevokeForm(),
    )


@bp.route("/devices/<device_id>/revoke", methods=["POST"])
@requires(Perm.DEVICES_REVOKE)
def revoke(device_id: str) -> Response:
    """Revoke in the database (the truth), then ask the relay to drop the tunnel now.

    If the relay cannot be reached the revocation still holds: relays refresh the
    revoked set periodically and close the tunnel within a minute.
    """
    row = load_device(device_id)
    form = RevokeForm()
    if not form.validate_on_submit():
        flash("Give a reason for the revocation.", "error")
        return redirect(url_for("fleet.device", device_id=row.id))
    reason = form.reason.data or ""
    already = row.revoked_at is not None
    revoke_device(db.session, row.id, reason=reason)
    record(
        "device.revoked",
        device_id=row.id,
        customer_id=row.customer_id,
        site_id=row.site_id,
        summary=f"revoked device {row.id}",
        details={"reason": reason, "again": already},
    )
    db.session.commit()
    outcome = relay_link().revoke(row.id)
    record(
        "relay.revoke_pushed",
        outcome="success" if outcome.ok else "failure",
        device_id=row.id,
        customer_id=row.customer_id,
        site_id=row.site_id,
        summary=outcome.message,
        details={"relay": outcome.relay_id},
    )
    db.session.commit()
    flash(f"Device revoked. {outcome.message}", "success" if outcome.ok else "info")
    return redirect(url_for("fleet.device", device_id=row.id))
