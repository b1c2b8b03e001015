"""Recording audit events from a request: who (the logged-in user), from where, about what.

The chain itself (hashing, locking, verification, retention) is in
:mod:`store.portal`; this module only fills in the request's context. Call
:func:`record` before ``db.session.commit()`` of the change it describes, so the
change and its record are stored together or not at all.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flask import current_app, g, request

from store.portal import AuditEvent, append_audit
from web.db import db

#: Address strings are short; a forged X-Forwarded-For must not bloat the trail.
SOURCE_MAX = 100


def client_addr() -> str:
    """The client's address: the socket peer, or with ``trust_proxy`` the right-most
    address in the chain ``X-Forwarded-For`` + peer that is not a trusted proxy.

    Each proxy appends the address it was reached from, so entries right of the last
    trusted proxy's are the truth and anything to the left is what the client claimed;
    the first entry is the client's to forge. A peer that is not a trusted proxy went
    around the proxy, and then its header is not believed at all.
    """
    peer = (request.remote_addr or "unknown")[:SOURCE_MAX]
    config = current_app.config["OUTLINK"]
    if not config.trust_proxy:
        return peer
    trusted = [ipaddress.ip_network(net, strict=False) for net in config.trusted_proxies]
    hops = request.headers.getlist("X-Forwarded-For")
    chain = [hop.strip() for line in hops for hop in line.split(",")] + [peer]
    for hop in reversed(chain):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return hop[:SOURCE_MAX]  # not an address: no proxy of ours wrote it
        if not any(address in net for net in trusted):
            return hop
    return chain[0][:SOURCE_MAX]  # every hop a proxy of ours (a request from the proxy host)


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
