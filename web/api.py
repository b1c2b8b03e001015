"""JSON for the pages' small scripts (live presence) and for tools; plus the health check.

Same session, same guard, same scope as the pages: an API call is just another
route. State-changing API calls (none yet) need the ``X-CSRFToken`` header.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from store.fleet import presence_of
from store.models import Device
from web.authz import Perm, authenticated, current_user, public, requires
from web.db import db
from web.fleet import device_filters, filtered_devices, load_device, stale_before
from web.paging import page_number, paginate
from web.recorder import record
from web.scope import current_scope

bp = Blueprint("api", __name__)

#: The presence endpoint answers for at most one page of devices at a time.
MAX_PRESENCE_IDS = 200


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _device_json(device: Device, online: bool, last_seen: Any) -> dict[str, Any]:
    return {
        "id": device.id,
        "hostname": device.hostname,
        "model": device.model,
        "customer_id": device.customer_id,
        "site_id": device.site_id,
        "enrolled_at": _iso(device.enrolled_at),
        "revoked": device.revoked_at is not None,
        "online": bool(online),
        "last_seen": _iso(last_seen),
    }


@bp.route("/healthz")
@public
def healthz() -> ResponseReturnValue:
    """Liveness plus a trivial database round trip (503 via the error handler if it fails)."""
    db.session.execute(text("SELECT 1"))
    return jsonify(status="ok")


@bp.route("/api/v1/whoami")
@authenticated
def whoami() -> ResponseReturnValue:
    user = current_user()
    return jsonify(username=user.username, role=user.role, permissions=sorted(user.perms))


@bp.route("/api/v1/presence")
@requires(Perm.DEVICE_VIEW)
def presence() -> ResponseReturnValue:
    """``?ids=a,b,c`` -> ``{id: {online, last_seen}}`` for the ids in scope (others omitted)."""
    ids = [i for i in request.args.get("ids", "").split(",") if 0 < len(i) <= 36]
    ids = ids[:MAX_PRESENCE_IDS]
    rows = presence_of(
        db.session, ids, devices=current_scope().devices(), stale_before=stale_before()
    )
    return jsonify(
        {i: {"online": is_online, "last_seen": _iso(seen)} for i, (is_online, seen) in rows.items()}
    )


@bp.route("/api/v1/devices")
@requires(Perm.DEVICE_VIEW)
def devices() -> ResponseReturnValue:
    page = paginate(db.session, filtered_devices(device_filters()), 100, page_number())
    return jsonify(
        total=page.total,
        page=page.number,
        pages=page.pages,
        devices=[_device_json(r.Device, r.is_online, r.last_seen) for r in page.rows],
    )


@bp.route("/api/v1/devices/<device_id>")
@requires(Perm.DEVICE_VIEW)
def device(device_id: str) -> ResponseReturnValue:
    row = load_device(device_id)
    is_online, last_seen = presence_of(
        db.session, [row.id], devices=current_scope().devices(), stale_before=stale_before()
    )[row.id]
    record(
        "device.view",
        device_id=row.id,
        customer_id=row.customer_id,
        site_id=row.site_id,
        summary=f"read device {row.id} via the API",
    )
    db.session.commit()
    return jsonify(_device_json(row, is_online, last_seen))
