"""Reading the audit trail: search and filter, keyset pages, CSV/JSON export -- all scoped.

A user without global scope sees only events about customers, sites and devices
they reach (sign-ins and admin changes name none, so only global readers see
them). Exports stream in id order with bounded memory and are themselves audited.
CSV cells that a spreadsheet would run as a formula are defused with a quote.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request, stream_with_context
from sqlalchemy import Select

from store.models import Customer
from store.portal import AuditEvent
from web.authz import Perm, requires
from web.db import db
from web.inputs import BIG_ID_MAX, DB_ID_MAX, query_number
from web.recorder import record
from web.scope import scoped

bp = Blueprint("audit", __name__, url_prefix="/audit")

#: Rows per round trip while exporting.
EXPORT_BATCH = 2000
#: One export is at most this many rows; narrow the filters for more.
EXPORT_MAX_ROWS = 1_000_000
FIELD_MAX = 100
COLUMNS = (
    "id",
    "ts",
    "kind",
    "outcome",
    "actor",
    "source",
    "customer_id",
    "site_id",
    "device_id",
    "summary",
    "details",
    "prev_hash",
    "hash",
)
#: Offered as suggestions in the kind filter (``prefix*`` matches a family).
KNOWN_KINDS = (
    "auth.*",
    "auth.login",
    "auth.lockout",
    "auth.totp",
    "auth.logout",
    "account.*",
    "admin.*",
    "admin.user_created",
    "admin.user_changed",
    "admin.user_disabled",
    "admin.token_created",
    "device.view",
    "device.revoked",
    "relay.*",
    "session.*",
    "audit.export",
    "audit.pruned",
)
#: Leading characters that make spreadsheets evaluate a cell (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _parse_time(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value[:40])
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 9999 moved past it by its offset
        return None


def audit_filters() -> dict[str, Any]:
    """Filters from the query string (bad values are dropped, never passed on)."""
    args = request.args
    return {
        "since": args.get("since", "")[:40],
        "until": args.get("until", "")[:40],
        "user": args.get("user", "").strip().lower()[:FIELD_MAX],
        "device": args.get("device", "").strip().lower()[:FIELD_MAX],
        "customer": query_number("customer", 1, DB_ID_MAX),
        "kind": args.get("kind", "").strip()[:FIELD_MAX],
        "outcome": args.get("outcome", "") if args.get("outcome") in ("success", "failure") else "",
    }


def filtered_events(filters: dict[str, Any]) -> Select[Any]:
    """Scoped events matching ``filters`` (no ordering: callers page by id)."""
    stmt = scoped(AuditEvent)
    since, until = _parse_time(filters["since"]), _parse_time(filters["until"])
    if since is not None:
        stmt = stmt.where(AuditEvent.ts >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.ts <= until)
    if filters["user"]:
        stmt = stmt.where(AuditEvent.actor == filters["user"])
    if filters["device"]:
        stmt = stmt.where(AuditEvent.device_id == filters["device"])
    if filters["customer"] is not None:
        stmt = stmt.where(AuditEvent.customer_id == filters["customer"])
    if filters["kind"]:
        kind = filters["kind"]
        stmt = stmt.where(
            AuditEvent.kind.startswith(kind[:-1], autoescape=True)
            if kind.endswith("*")
            else AuditEvent.kind == kind
        )
    if filters["outcome"]:
        stmt = stmt.where(AuditEvent.outcome == filters["outcome"])
    return stmt


@bp.route("")
@requires(Perm.AUDIT_READ)
def search() -> str:
    filters = audit_filters()
    size = current_app.config["OUTLINK"].page_size
    stmt = filtered_events(filters)
    before = query_number("before", 1, BIG_ID_MAX)
    after = query_number("after", 1, BIG_ID_MAX)
    if after is not None:
        rows = list(
            reversed(
                db.session.execute(
                    stmt.where(AuditEvent.id > after).order_by(AuditEvent.id).limit(size + 1)
                )
                .scalars()
                .all()
            )
        )
        has_newer, rows = len(rows) > size, rows[-size:] if len(rows) > size else rows
        has_older = True
    else:
        if before is not None:
            stmt = stmt.where(AuditEvent.id < before)
        rows = list(
            db.session.execute(stmt.order_by(AuditEvent.id.desc()).limit(size + 1)).scalars().all()
        )
        has_older, rows = len(rows) > size, rows[:size]
        has_newer = before is not None
    customers = db.session.execute(
        scoped(Customer, Customer.id, Customer.name).order_by(Customer.name)
    ).all()
    names: dict[int, str] = {c.id: c.name for c in customers}
    query = {k: v for k, v in filters.items() if v not in ("", None)}
    return render_template(
        "audit/search.html",
        events=rows,
        filters=filters,
        query=query,
        customers=customers,
        customer_names=names,
        kinds=KNOWN_KINDS,
        has_older=has_older,
        has_newer=has_newer,
    )


def _export_rows(filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
    stmt = filtered_events(filters)
    after, sent = 0, 0
    while sent < EXPORT_MAX_ROWS:
        batch = (
            db.session.execute(
                stmt.where(AuditEvent.id > after).order_by(AuditEvent.id).limit(EXPORT_BATCH)
            )
            .scalars()
            .all()
        )
        if not batch:
            return
        for event in batch:
            row = {c: getattr(event, c) for c in COLUMNS}
            row["ts"] = event.ts.isoformat()
            yield row
        sent += len(batch)
        after = batch[-1].id
        db.session.expunge_all()


def _defuse(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _audit_export(fmt: str, filters: dict[str, Any]) -> None:
    record(
        "audit.export",
        summary=f"exported the audit trail as {fmt}",
        details={"filters": {k: v for k, v in filters.items() if v not in ("", None)}},
    )
    db.session.commit()


def _filename(ext: str) -> str:
    return f"outlink-audit-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{ext}"


@bp.route("/export.csv")
@requires(Perm.AUDIT_READ)
def export_csv() -> Response:
    filters = audit_filters()
    _audit_export("csv", filters)

    def generate() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        for row in _export_rows(filters):
            writer.writerow({k: _defuse(v) for k, v in row.items()})
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return Response(
        stream_with_context(generate()),
        mimetype="text/csv",
        headers={"Content-Disposition": f"attachment; filename={_filename('csv')}"},
    )


@bp.route("/export.json")
@requires(Perm.AUDIT_READ)
def export_json() -> Response:
    filters = audit_filters()
    _audit_export("json", filters)

    def generate() -> Iterator[str]:
        yield "["
        for i, row in enumerate(_export_rows(filters)):
            row["details"] = json.loads(row["details"])
            yield ("," if i else "") + "\n" + json.dumps(row, ensure_ascii=False)
        yield "\n]\n"

    return Response(
        stream_with_context(generate()),
        mimetype="application/json",
        headers={"Content-Disposition": f"attachment; filename={_filename('json')}"},
    )
