"""Recording audit events from a request: who (the logged-in user), from where, about what.

The chain itself (hashing, locking, verification, retention) is in
:mod:`store.portal`; this module only fills in the request's context. Call
:func:`record` before ``db.session.commit()`` of the change it describes, so the
change and its record are stored together or not at all.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, g, request

from store.portal import AuditEvent, append_audit
from web.db import db

#: Address strings are short; a forged X-Forwarded-For must not bloat the trail.
SOURCE_MAX = 100


def client_addr() -> str:
    """The client's address: the socket peer, or the proxy's X-Forwarded-For when trusted."""
    if current_app.config["OUTLINK"].trust_proxy:
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            return forwarded.split(",")[0].strip()[:SOURCE_MAX]
    return (request.remote_addr or "unknown")[:SOURCE_MAX]


def record(
    kind: str,
    *,
    outcome: str = "success",
    summary: str = "",
    actor: str | None = None,
    user_id: int | None = None,
    customer_id: int | None = None,
    site_id: int | None = None,
    device_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an event for the current request (actor defaults to the logged-in user)."""
    user = g.get("user")
    if actor is None and user is not None:
        actor, user_id = user.username, user.id
    return append_audit(
        db.session,
        kind,
        outcome=outcome,
        actor=actor,
        user_id=user_id,
        source=client_addr(),
        customer_id=customer_id,
        site_id=site_id,
        device_id=device_id,
        summary=summary,
        details=details,
    )
