"""Webhook signatures: HMAC-SHA256 over the timestamp and the body.

Each webhook POST carries::

    X-Outlink-Timestamp: 1732730000
    X-Outlink-Signature: sha256=<hex of HMAC-SHA256(secret, b"1732730000." + body)>
    X-Outlink-Delivery:  <notification id>

A receiver recomputes the HMAC with the shared secret, compares in constant time, and
refuses timestamps older (or newer) than TOLERANCE seconds, so a captured request
cannot be replayed later. `verify` is what a receiver in Python would call.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Outlink-Signature"
TIMESTAMP_HEADER = "X-Outlink-Timestamp"
DELIVERY_HEADER = "X-Outlink-Delivery"
#: Replay window; receivers' clocks are NTP-synchronised servers.
TOLERANCE = 300
_PREFIX = "sha256="


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Outlink-Signature`` value for `body` sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256)
    return _PREFIX + mac.hexdigest()


def verify(
    secret: bytes,
    timestamp: str,
    signature: str,
    body: bytes,
    *,
    now: float,
    tolerance: int = TOLERANCE,
) -> bool:
    """True if `signature` is `body`'s at `timestamp` and the timestamp is fresh."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)
