"""Every refusal leaves a trace: a line in the relay's JSON log, a count by reason in
the metrics and, for refused certificates and refused viewers, an audit row -- bounded,
so a flood cannot fill the disk or the audit table.

Certificates are refused in two places:

* **The TLS handshake** (CERT_OPTIONAL against the fleet CA, decision 0003): a foreign
  CA, an expired or not yet valid certificate, a wrong purpose. OpenSSL aborts the
  handshake and Python's ssl gives only the exception; the relay's event loop passes it
  on (`eventloop.SharedBufferSSLProtocol` -> `RelayConnection.tls_failed`). OpenSSL
  keeps the peer certificate only once its chain verified, and the ssl module offers no
  public way to see a refused one, so these events carry the verify code and message
  (`ssl.SSLCertVerificationError`) and the peer address -- not issuer, serial or
  fingerprint. The handshake itself stays as strict as it was.
* **`process_request`**, after TLS: no certificate, no Outlink identity, the wrong
  identity for the path, revoked. The certificate is at hand there: issuer, subject,
  serial and SHA-256 fingerprint are recorded.

The other refusals of a request (unknown path, per-source limits, subprotocol; on the
viewer port: Origin, ticket) go through here too, so they are bounded the same way;
the caller says which are audited and under which kind.

Bounds (sans-I/O: the caller passes ``now``): a token bucket per (reason, source
address) and one for the whole relay; what they hold back is counted per reason and
written as one summary event per reason by `sweep` ("N more suppressed"), which the
relay runs every SUMMARY_INTERVAL and at shutdown. Metrics count every refusal,
suppressed or not.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography import x509

from pki.serials import serial_hex
from relay_server.audit import AuditLog
from relay_server.metrics import RelayStats

log = logging.getLogger(__name__)

AUDIT_KIND: Final = "relay.connection_refused"
SUMMARY_KIND: Final = "relay.connection_refusals_suppressed"
# The log's name for refusals that are not audited (a stray path, a rate limit...).
UNAUDITED_KIND: Final = "relay.request_refused"

# Per (reason, source): a few events at once, then one a minute -- enough to see that a
# misconfigured device keeps trying, too few to fill anything.
SOURCE_BURST: Final = 5
SOURCE_RATE: Final = 1 / 60
# The whole relay: a flood from many addresses still writes at most ~12 events a minute
# (plus one summary per reason per sweep).
RELAY_BURST: Final = 60
RELAY_RATE: Final = 0.2
# Held-back refusals are summarised this often (seconds).
SUMMARY_INTERVAL: Final = 60.0
# Sources remembered for the per-source buckets and per reason in the summaries; beyond
# this, buckets that have refilled are forgotten, and new sources are only counted.
MAX_TRACKED: Final = 10_000
# Sources named in a summary event (the busiest).
SUMMARY_TOP: Final = 5

# OpenSSL verify codes (X509_V_ERR_*) -> reason label; any other code is "cert_invalid".
_VERIFY_REASONS: Final = {
    2: "unknown_ca",  # unable to get issuer certificate
    7: "unknown_ca",  # certificate signature failure
    9: "not_yet_valid",
    10: "expired",
    18: "unknown_ca",  # self-signed certificate
    19: "unknown_ca",  # self-signed certificate in chain
    20: "unknown_ca",  # unable to get local issuer certificate
    21: "unknown_ca",  # unable to verify the first certificate
    23: "revoked",
    26: "wrong_purpose",
}
#: Refusals of a certificate (or of its absence where one is needed): audited.
CERTIFICATE_REASONS: Final = frozenset(
    {
        *_VERIFY_REASONS.values(),
        "cert_invalid",  # another verify failure (code and message in the event)
        "no_cert",
        "bad_cert",
        "wrong_identity",
    }
)
#: Every reason label (a fixed set: a peer cannot grow the metric's cardinality).
REASONS: Final = CERTIFICATE_REASONS | {
    # A TLS failure that is not a verify verdict: plain HTTP or an old protocol (scanners),
    # or the peer's own alert (it distrusts our certificate: its side raises the alarm).
    "tls_failed",
    "not_found",
    "rate_limited",
    "capacity",
    "unavailable",
    "bad_subprotocol",
    "bad_origin",
    "bad_ticket",
    "device_unavailable",
}


def certificate_fields(der: bytes) -> dict[str, str]:
    """What identifies a presented certificate in a log line, without trusting it:
    SHA-256 fingerprint of the DER, and issuer, subject and serial if it parses (OpenSSL
    accepted it, but a refusal must not fail on what a stricter parser rejects)."""
    fields = {"fingerprint": hashlib.sha256(der).hexdigest()}
    try:
        cert = x509.load_der_x509_certificate(der)
        fields.update(
            issuer=cert.issuer.rfc4514_string(),
            subject=cert.subject.rfc4514_string(),
            serial=serial_hex(cert.serial_number),
        )
    except ValueError:
        pass  # the fingerprint still names it
    return fields


def tls_reason(exc: BaseException) -> tuple[str, dict[str, Any]] | None:
    """The reason label and details of a failed TLS handshake; None when it was not a
    refusal (the peer went away, or the handshake timed out: only counted by asyncio)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        return _VERIFY_REASONS.get(code, "cert_invalid"), {
            "verify_code": code,
            "verify_message": exc.verify_message,
        }
    if isinstance(exc, ssl.SSLError):
        return "tls_failed", {"tls_error": exc.reason or type(exc).__name__}
    return None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(slots=True)
class _Held:
    """Refusals of one reason held back since the last sweep."""

    count: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    audited: bool = False  # some of them would have been audited: so is the summary


class RefusalLog:
    """Records refusals: counts all, logs and audits what the buckets let through."""

    def __init__(self, audit: AuditLog, stats: RelayStats, now: float) -> None:
        self._audit = audit
        self._stats = stats
        self._relay_bucket = _Bucket(RELAY_BURST, now)
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._held: dict[str, _Held] = {}

    def refused(
        self,
        reason: str,
        now: float,
        *,
        source: str,
        peer: str,
        endpoint: str,
        audit_kind: str | None = AUDIT_KIND,
        cert_der: bytes | None = None,
        device_id: str | None = None,
        **details: Any,
    ) -> None:
        """One refusal of `peer` (address `source`) for `reason` (one of REASONS):
        logged (WARNING when audited, else INFO) and audited as `audit_kind` unless None.
        `cert_der`, the presented certificate, is only parsed when the event is written."""
        assert reason in REASONS, reason
        self._stats.refusals[reason] += 1
        if not self._admit(reason, source, now):
            self._stats.refusals_suppressed[reason] += 1
            held = self._held.setdefault(reason, _Held())
            held.count += 1
            held.audited |= audit_kind is not None
            if source in held.sources or len(held.sources) < MAX_TRACKED:
                held.sources[source] += 1
            return
        fields: dict[str, Any] = {"reason": reason, "endpoint": endpoint, **details}
        if cert_der:
            fields.update(certificate_fields(cert_der))
        log.log(
            logging.WARNING if audit_kind is not None else logging.INFO,
            "! refused %s: %s",
            endpoint,
            reason,
            extra={"security_event": audit_kind or UNAUDITED_KIND, "peer": peer, **fields},
        )
        if audit_kind is not None:
            self._audit.record(
                audit_kind,
                f"connection refused: {reason}",
                outcome="failure",
                device_id=device_id,
                source=peer,
                **fields,
            )

    def sweep(self) -> int:
        """Write one summary event per reason for what was held back since the last
        sweep; returns how many were written."""
        held, self._held = self._held, {}
        for reason, h in sorted(held.items()):
            top = [{"source": s, "refusals": n} for s, n in h.sources.most_common(SUMMARY_TOP)]
            fields: dict[str, Any] = {
                "reason": reason,
                "suppressed": h.count,
                "sources": len(h.sources),
                "top_sources": top,
            }
            log.log(
                logging.WARNING if h.audited else logging.INFO,
                "! %d more refusals suppressed: %s",
                h.count,
                reason,
                extra={"security_event": SUMMARY_KIND, **fields},
            )
            if h.audited:
                self._audit.record(
                    SUMMARY_KIND,
                    f"{h.count} more connection refusals suppressed: {reason}",
                    outcome="failure",
                    **fields,
                )
        return len(held)

    def _admit(self, reason: str, source: str, now: float) -> bool:
        key = (reason, source)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._prune(now)
            if len(self._buckets) >= MAX_TRACKED:
                return False  # a flood from very many addresses: count it only
            bucket = self._buckets[key] = _Bucket(SOURCE_BURST, now)
        # Both buckets must allow it; the source's token is spent first so one source
        # cannot drain the relay's bucket beyond its own share.
        return bucket.take(now, SOURCE_RATE, SOURCE_BURST) and self._relay_bucket.take(
            now, RELAY_RATE, RELAY_BURST
        )

    def _prune(self, now: float) -> None:
        """Forget sources whose bucket has refilled (they would start full anyway)."""
        refill = SOURCE_BURST / SOURCE_RATE
        for key in [k for k, b in self._buckets.items() if now - b.stamp >= refill]:
            del self._buckets[key]
