"""Classify why a connection attempt (or a link) failed: retry, or call a human.

`classify(exc)` is pure: an exception in, a `Failure` out. The connection manager
retries *retryable* failures with the normal backoff. *Needs-a-human* failures
are the ones that will not fix themselves and may be an attack: the relay's
certificate does not chain to the pinned CA (a TLS-intercepting proxy, a wrong
CA) or names another host, the relay refuses our certificate (revoked), the
relay or the proxy refuses us for a reason retrying will not change. Those raise
a distinct local alarm and are retried no faster than the backoff cap.

Note the trap this module exists for: `ssl.SSLCertVerificationError` is an
`OSError`, and websockets' own reconnect loop retries every `OSError`, so a
certificate failure would otherwise look like a flaky network forever.

`Failure.detail` is built here from known fields, never `str(exc)` of an unknown
exception, so a proxy URL with a password cannot leak into logs or status files.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidProxy,
    InvalidProxyStatus,
    InvalidStatus,
    ProxyError,
    SecurityError,
)

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH: the chain is fine, the name is not.
X509_V_ERR_HOSTNAME_MISMATCH = 62
X509_V_ERR_IP_ADDRESS_MISMATCH = 64
# Retry-After larger than this is not believed (an hour); backoff clamps further.
MAX_RETRY_AFTER = 3600.0

# Retryable codes
NETWORK = "network"
TIMEOUT = "timeout"
RELAY_UNAVAILABLE = "relay_unavailable"
RATE_LIMITED = "rate_limited"
GOING_AWAY = "going_away"
PROXY_UNAVAILABLE = "proxy_unavailable"
TUNNEL_CLOSED = "tunnel_closed"
INTERNAL = "internal"
# Needs-a-human codes
RELAY_CERT_UNTRUSTED = "relay_cert_untrusted"
RELAY_HOSTNAME_MISMATCH = "relay_hostname_mismatch"
CLIENT_CERT_REFUSED = "client_cert_refused"
RELAY_REFUSED = "relay_refused"
PROTOCOL_MISMATCH = "protocol_mismatch"
PROXY_AUTH_FAILED = "proxy_auth_failed"
PROXY_REFUSED = "proxy_refused"
PROXY_INVALID = "proxy_invalid"
LOCAL_CREDENTIALS = "local_credentials"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt failed. `detail` is safe to log and to show in `status`."""

    code: str
    needs_human: bool
    detail: str
    # Seconds the server asked us to wait (GOAWAY, 429/503 Retry-After), if any.
    retry_after: float | None = None


class GoAway(Exception):
    """The relay sent GOAWAY: come back after `retry_after` seconds."""

    def __init__(self, retry_after: float, reason: str = "") -> None:
        super().__init__(f"relay going away, retry after {retry_after:.3f} s: {reason}")
        self.retry_after = retry_after
        self.reason = reason


class TunnelRefused(Exception):
    """The relay closed the tunnel with a code that retrying will not change (e.g. REVOKED)."""

    def __init__(self, code_name: str) -> None:
        super().__init__(f"relay closed the tunnel: {code_name}")
        self.code_name = code_name


class TunnelLost(Exception):
    """The tunnel ended for a transient reason (dead peer, reset, relay error)."""

    def __init__(self, code_name: str) -> None:
        super().__init__(f"tunnel lost: {code_name}")
        self.code_name = code_name


class ProtocolMismatch(Exception):
    """The relay answered the upgrade without our subprotocol."""


class LocalCredentialsError(Exception):
    """Our own CA file, certificate or key is missing, unreadable, mismatched or expired."""


def classify(exc: BaseException) -> Failure:
    """Map one exception from a connection attempt or a lost link to a `Failure`."""
    if isinstance(exc, GoAway):
        return Failure(GOING_AWAY, False, f"relay going away: {exc.reason}", exc.retry_after)
    if isinstance(exc, TunnelRefused):
        return Failure(CLIENT_CERT_REFUSED, True, f"relay closed the tunnel: {exc.code_name}")
    if isinstance(exc, TunnelLost):
        return Failure(TUNNEL_CLOSED, False, f"tunnel lost: {exc.code_name}")
    if isinstance(exc, ProtocolMismatch):
        return Failure(
            PROTOCOL_MISMATCH, True, "relay did not accept subprotocol outlink.tunnel.v1"
        )
    if isinstance(exc, LocalCredentialsError):
        return Failure(LOCAL_CREDENTIALS, True, str(exc))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _cert_failure(exc)
    if isinstance(exc, InvalidProxy):
        # str(exc) starts with the proxy URL, password included: use only the reason.
        return Failure(PROXY_INVALID, True, f"proxy address not usable: {exc.msg}")
    if isinstance(exc, InvalidProxyStatus):
        return _proxy_status(exc.response.status_code)
    if isinstance(exc, ProxyError):
        return Failure(PROXY_UNAVAILABLE, False, "proxy did not answer CONNECT properly")
    if isinstance(exc, InvalidStatus):
        return _relay_status(exc)
    if isinstance(exc, InvalidMessage):
        # Typically EOF before the HTTP response: the peer (or a middlebox) hung up.
        return Failure(NETWORK, False, "connection closed during the opening handshake")
    if isinstance(exc, SecurityError):
        # e.g. a redirect from wss:// to ws://, or absurd response headers.
        return Failure(RELAY_REFUSED, True, f"refused an unsafe handshake ({type(exc).__name__})")
    if isinstance(exc, InvalidHandshake):
        return Failure(PROTOCOL_MISMATCH, True, f"invalid opening handshake ({type(exc).__name__})")
    if isinstance(exc, ConnectionClosed):
        return Failure(NETWORK, False, "websocket connection closed")
    if isinstance(exc, TimeoutError):
        return Failure(TIMEOUT, False, "timed out")
    if isinstance(exc, ssl.SSLError):
        # Not a verification failure: EOF inside TLS, a reset, an alert. Transient as
        # far as we can tell (a relay rejecting our expired cert is caught locally first).
        return Failure(NETWORK, False, f"TLS error: {exc.reason or type(exc).__name__}")
    if isinstance(exc, OSError):
        return Failure(NETWORK, False, _os_detail(exc))
    return Failure(INTERNAL, False, f"unexpected {type(exc).__name__}")


def _cert_failure(exc: ssl.SSLCertVerificationError) -> Failure:
    message = exc.verify_message or "verification failed"
    if exc.verify_code in (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH):
        return Failure(RELAY_HOSTNAME_MISMATCH, True, f"relay certificate: {message}")
    return Failure(RELAY_CERT_UNTRUSTED, True, f"relay certificate: {message}")


def _proxy_status(status: int) -> Failure:
    if status in (401, 407):  # 407 per RFC 9110; tinyproxy answers a wrong password with 401
        return Failure(PROXY_AUTH_FAILED, True, f"proxy refused our credentials (HTTP {status})")
    if status >= 500:
        return Failure(PROXY_UNAVAILABLE, False, f"proxy could not reach the relay (HTTP {status})")
    return Failure(PROXY_REFUSED, True, f"proxy refused CONNECT (HTTP {status})")


def _relay_status(exc: InvalidStatus) -> Failure:
    status = exc.response.status_code
    retry_after = _retry_after(exc.response.headers.get("Retry-After"))
    if status == 429:
        return Failure(RATE_LIMITED, False, "relay is rate limiting (HTTP 429)", retry_after)
    if status >= 500:
        return Failure(RELAY_UNAVAILABLE, False, f"relay unavailable (HTTP {status})", retry_after)
    if status in (401, 403):
        return Failure(CLIENT_CERT_REFUSED, True, f"relay refused our certificate (HTTP {status})")
    return Failure(RELAY_REFUSED, True, f"relay refused the connection (HTTP {status})")


def _retry_after(value: str | None) -> float | None:
    """Delta-seconds form only; an HTTP-date or garbage means 'no hint'."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER)


def _os_detail(exc: OSError) -> str:
    name = type(exc).__name__
    return f"{name}: {exc.strerror}" if exc.strerror else name
