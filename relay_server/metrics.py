"""Relay metrics: plain counters bumped on rare events, read lazily at scrape time.

Nothing here runs per frame. Traffic counters live in each tunnel (`Tunnel.stats`,
maintained by the tunnel core); `RelayCollector` sums them over the live tunnels when
Prometheus scrapes, plus what closed tunnels left behind (`RelayStats.fold`). Every
label value comes from a fixed set, so a peer cannot blow up label cardinality.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Set
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from tunnel.stats import CONNECTION_KIND, OTHER_KIND, KindStats

if TYPE_CHECKING:
    from relay_server.audit import AuditLog
    from relay_server.limits import SourceLimiter
    from relay_server.links import Link
    from relay_server.presence import PresenceWriter
    from relay_server.revocation import RevocationCache

# Channel kinds reported under their own label; anything else is OTHER_KIND.
KNOWN_KINDS = frozenset(
    {
        "control",
        "telemetry",
        "desktop",
        "input",
        "diagnostics",
        "files",
        "update",
        "rpc",
        "bridge",
        CONNECTION_KIND,
        OTHER_KIND,
    }
)

ENDPOINTS = ("agent", "service")


def kind_label(kind: str) -> str:
    return kind if kind in KNOWN_KINDS else OTHER_KIND


class RelayStats:
    """Counters of relay events. Bump them directly; they are read at scrape time."""

    def __init__(self) -> None:
        self.tcp_accepted = 0
        self.tls_established = 0
        self.handshakes: Counter[tuple[str, str]] = Counter()  # (endpoint, outcome)
        self.replaced = 0
        self.revoked_closed = 0
        self.tunnels_closed: Counter[tuple[str, str]] = Counter()  # (endpoint, code name)
        self.rpc: Counter[tuple[str, str]] = Counter()  # (op, outcome)
        self.control: Counter[tuple[str, str]] = Counter()  # (op, outcome)
        self.bridges: Counter[tuple[str, str]] = Counter()  # (kind, outcome)
        self.bridges_active = 0
        self.refusals: Counter[str] = Counter()  # reason (relay_server.refusals.REASONS)
        self.refusals_suppressed: Counter[str] = Counter()  # reason: not logged, only counted
        # (endpoint, kind) -> [frames_in, frames_out, bytes_in, bytes_out] of closed tunnels
        self._closed_traffic: dict[tuple[str, str], list[int]] = {}
        self.started = time.time()

    def fold(self, endpoint: str, stats: Iterable[tuple[str, KindStats]]) -> None:
        """Keep a closed tunnel's traffic counters (call once when it ends)."""
        for kind, s in stats:
            _add(self._closed_traffic, (endpoint, kind_label(kind)), s)

    def traffic(
        self, live: Iterable[tuple[str, Iterable[tuple[str, KindStats]]]]
    ) -> dict[tuple[str, str], list[int]]:
        """Closed tunnels' totals plus the given live tunnels' counters."""
        totals = {key: list(value) for key, value in self._closed_traffic.items()}
        for endpoint, stats in live:
            for kind, s in stats:
                _add(totals, (endpoint, kind_label(kind)), s)
        return totals


def _add(into: dict[tuple[str, str], list[int]], key: tuple[str, str], s: KindStats) -> None:
    row = into.get(key)
    if row is None:
        row = into[key] = [0, 0, 0, 0]
    row[0] += s.frames_in
    row[1] += s.frames_out
    row[2] += s.bytes_in
    row[3] += s.bytes_out


class RelayCollector(Collector):
    """Builds every relay metric from the relay's state when Prometheus scrapes."""

    def __init__(
        self,
        relay_id: str,
        stats: RelayStats,
        *,
        agents: Mapping[str, Link],
        services: Set[Link],
        limiter: SourceLimiter,
        revocation: RevocationCache,
        presence: PresenceWriter,
        audit: AuditLog,
    ) -> None:
        self._relay_id = relay_id
        self._stats = stats
        self._agents = agents
        self._services = services
        self._limiter = limiter
        self._revocation = revocation
        self._presence = presence
        self._audit = audit

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        agents, services = self._agents, self._services
        links: list[tuple[str, Link]] = [("agent", link) for link in agents.values()]
        links += [("service", link) for link in services]

        info = GaugeMetricFamily(
            "outlink_relay_info", "Relay identity (value is always 1).", labels=["relay_id"]
        )
        info.add_metric([self._relay_id], 1)
        yield info
        yield GaugeMetricFamily(
            "outlink_relay_start_time_seconds", "Unix time the relay started.", stats.started
        )
        yield GaugeMetricFamily(
            "outlink_relay_agents_connected", "Agents with an open tunnel.", len(agents)
        )
        yield GaugeMetricFamily(
            "outlink_relay_services_connected",
            "Service clients (portal...) with an open tunnel.",
            len(services),
        )
        yield GaugeMetricFamily(
            "outlink_relay_connections_open",
            "TLS connections, including those still in the WebSocket handshake.",
            self._limiter.total_open,
        )
        yield GaugeMetricFamily(
            "outlink_relay_sources_tracked",
            "Source addresses tracked for rate limiting.",
            self._limiter.tracked(),
        )
        yield CounterMetricFamily(
            "outlink_relay_tcp_accepted",
            "TCP connections accepted (TLS handshake not necessarily completed).",
            stats.tcp_accepted,
        )
        yield CounterMetricFamily(
            "outlink_relay_tls_established",
            "TLS handshakes completed; the difference to tcp_accepted failed or timed out.",
            stats.tls_established,
        )
        yield _labelled(
            CounterMetricFamily(
                "outlink_relay_handshakes",
                "WebSocket handshakes by endpoint and outcome.",
                labels=["endpoint", "outcome"],
            ),
            stats.handshakes,
        )
        refusals = CounterMetricFamily(
            "outlink_relay_refusals",
            "Peers refused at the TLS handshake or the WebSocket request, by reason.",
            labels=["reason"],
        )
        suppressed = CounterMetricFamily(
            "outlink_relay_refusals_suppressed",
            "Refusals counted but not logged one by one (rate limit), by reason.",
            labels=["reason"],
        )
        for family, counts in ((refusals, stats.refusals), (suppressed, stats.refusals_suppressed)):
            for reason, value in sorted(counts.items()):
                family.add_metric([reason], value)
            yield family
        frames = CounterMetricFamily(
            "outlink_relay_frames",
            "Tunnel frames by endpoint, channel kind and direction.",
            labels=["endpoint", "kind", "direction"],
        )
        nbytes = CounterMetricFamily(
            "outlink_relay_bytes",
            "Tunnel frame bytes (headers included) by endpoint, channel kind and direction.",
            labels=["endpoint", "kind", "direction"],
        )
        traffic = stats.traffic(
            (endpoint, link.tunnel.stats.items()) for endpoint, link in links if link.tunnel
        )
        for (endpoint, kind), (f_in, f_out, b_in, b_out) in sorted(traffic.items()):
            frames.add_metric([endpoint, kind, "in"], f_in)
            frames.add_metric([endpoint, kind, "out"], f_out)
            nbytes.add_metric([endpoint, kind, "in"], b_in)
            nbytes.add_metric([endpoint, kind, "out"], b_out)
        yield frames
        yield nbytes

        queued = GaugeMetricFamily(
            "outlink_relay_send_queue_bytes",
            "Message bytes queued in tunnels and not yet framed, summed per endpoint.",
            labels=["endpoint"],
        )
        queued_max = GaugeMetricFamily(
            "outlink_relay_send_queue_max_bytes",
            "Largest single tunnel send queue per endpoint.",
            labels=["endpoint"],
        )
        buffered = GaugeMetricFamily(
            "outlink_relay_write_buffer_bytes",
            "Bytes in the sockets' write buffers (written by the tunnel, not yet sent).",
            labels=["endpoint"],
        )
        channels = GaugeMetricFamily(
            "outlink_relay_channels_open", "Open channels per endpoint.", labels=["endpoint"]
        )
        for endpoint in ENDPOINTS:
            tunnels = [link.tunnel for e, link in links if e == endpoint and link.tunnel]
            depths = [t.queued_bytes for t in tunnels]
            queued.add_metric([endpoint], sum(depths))
            queued_max.add_metric([endpoint], max(depths, default=0))
            buffered.add_metric(
                [endpoint], sum(link.write_buffer_size() for e, link in links if e == endpoint)
            )
            channels.add_metric([endpoint], sum(t.open_channels for t in tunnels))
        yield queued
        yield queued_max
        yield buffered
        yield channels

        yield CounterMetricFamily(
            "outlink_relay_replaced",
            "Agent tunnels closed because the same device connected again.",
            stats.replaced,
        )
        yield CounterMetricFamily(
            "outlink_relay_revocations",
            "Open tunnels closed because their device or certificate was revoked.",
            stats.revoked_closed,
        )
        yield _labelled(
            CounterMetricFamily(
                "outlink_relay_tunnels_closed",
                "Tunnels ended, by endpoint and tunnel error code.",
                labels=["endpoint", "code"],
            ),
            stats.tunnels_closed,
        )
        revoked = GaugeMetricFamily(
            "outlink_relay_revoked_entries",
            "Entries in the revocation cache.",
            labels=["type"],
        )
        revoked.add_metric(["serial"], len(self._revocation.serials))
        revoked.add_metric(["device"], len(self._revocation.devices))
        yield revoked
        loaded = self._revocation.loaded_at
        yield GaugeMetricFamily(
            "outlink_relay_revocation_age_seconds",
            "Seconds since the revocation cache was last loaded.",
            time.monotonic() - loaded if loaded is not None else float("nan"),
        )
        yield _labelled(
            CounterMetricFamily(
                "outlink_relay_rpc_requests",
                "Service rpc requests by op and outcome.",
                labels=["op", "outcome"],
            ),
            stats.rpc,
        )
        yield _labelled(
            CounterMetricFamily(
                "outlink_relay_control_requests",
                "Agent control-channel requests by op and outcome.",
                labels=["op", "outcome"],
            ),
            stats.control,
        )
        yield _labelled(
            CounterMetricFamily(
                "outlink_relay_bridges",
                "Bridge requests by channel kind and outcome.",
                labels=["kind", "outcome"],
            ),
            stats.bridges,
        )
        yield GaugeMetricFamily(
            "outlink_relay_bridges_active", "Bridges currently spliced.", stats.bridges_active
        )
        yield GaugeMetricFamily(
            "outlink_relay_presence_pending",
            "Presence changes waiting for the next batched database write.",
            self._presence.pending(),
        )
        yield GaugeMetricFamily(
            "outlink_relay_audit_pending",
            "Relay security events waiting to be written to the audit trail.",
            self._audit.pending(),
        )
        yield CounterMetricFamily(
            "outlink_relay_audit_dropped",
            "Relay security events dropped because the audit backlog was full.",
            self._audit.dropped,
        )
        yield CounterMetricFamily(
            "outlink_relay_presence_flushes",
            "Batched presence writes to the database.",
            self._presence.writes,
        )


def _labelled(family: CounterMetricFamily, counts: Counter[tuple[str, str]]) -> Metric:
    for labels, value in sorted(counts.items()):
        family.add_metric(list(labels), value)
    return family


def make_registry(collector: RelayCollector) -> CollectorRegistry:
    """A registry of one relay only (several relays in one test process stay apart);
    features add their collectors to it (`FeatureHost.add_metrics`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
