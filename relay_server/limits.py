"""Per-source-address admission limits (sans-I/O: the caller passes `now`).

Two limits per source address, both answered with HTTP 429 + Retry-After by the
server: concurrent connections, and a token bucket for new connections per second.
Plus one relay-wide cap on concurrent connections (HTTP 503), which protects the
process's memory budget.

Memory is bounded: at most `max_tracked` sources are remembered; when that is
exceeded, sources without open connections are forgotten (oldest first). A
forgotten source starts again with a full bucket, which is what it would have after
an idle period anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A client refused for having too many open connections should not hammer us; the
# connections it has will not all go away in less than this.
CONCURRENCY_RETRY_AFTER = 10
# Relay-wide cap reached: agents should try again (possibly another relay) after this.
CAPACITY_RETRY_AFTER = 30


@dataclass(slots=True)
class _Source:
    tokens: float
    stamp: float
    open: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is refused: HTTP status, short text, Retry-After seconds, metric label."""

    status: int
    text: str
    retry_after: int
    outcome: str


class SourceLimiter:
    """Concurrent connections and connection rate per source address."""

    def __init__(
        self,
        *,
        max_per_source: int,
        rate: float,
        burst: int,
        max_total: int,
        max_tracked: int,
    ) -> None:
        self._max_per_source = max_per_source
        self._rate = rate
        self._burst = float(burst)
        self._max_total = max_total
        self._max_tracked = max_tracked
        self._sources: dict[str, _Source] = {}
        self.total_open = 0

    def opened(self, source: str, now: float) -> None:
        """A TCP/TLS connection from `source` exists now (call from connection_made)."""
        entry = self._sources.get(source)
        if entry is None:
            entry = self._sources[source] = _Source(self._burst, now)
            self._prune()
        entry.open += 1
        self.total_open += 1

    def closed(self, source: str) -> None:
        """The connection counted by `opened` is gone (call from connection_lost)."""
        entry = self._sources.get(source)
        if entry is not None and entry.open > 0:
            entry.open -= 1
            self.total_open -= 1

    def check(self, source: str, now: float) -> Refusal | None:
        """Admit one new WebSocket request from `source` (already `opened`), or say why not."""
        if self.total_open > self._max_total:
            return Refusal(503, "relay at capacity\n", CAPACITY_RETRY_AFTER, "capacity")
        entry = self._sources.get(source)
        if entry is None:  # not opened (cannot happen via the server); count it anyway
            entry = self._sources[source] = _Source(self._burst, now)
        if self._max_per_source and entry.open > self._max_per_source:
            return Refusal(
                429,
                "too many connections from your address\n",
                CONCURRENCY_RETRY_AFTER,
                "rate_limited",
            )
        if self._rate:
            entry.tokens = min(self._burst, entry.tokens + (now - entry.stamp) * self._rate)
            entry.stamp = now
            if entry.tokens < 1.0:
                retry = max(1, math.ceil((1.0 - entry.tokens) / self._rate))
                return Refusal(429, "too many new connections\n", retry, "rate_limited")
            entry.tokens -= 1.0
        return None

    def tracked(self) -> int:
        return len(self._sources)

    def _prune(self) -> None:
        if len(self._sources) <= self._max_tracked:
            return
        # dicts keep insertion order: the first entries are the oldest sources.
        for source in [s for s, e in self._sources.items() if e.open == 0]:
            del self._sources[source]
            if len(self._sources) <= self._max_tracked // 2:
                break
