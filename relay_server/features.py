"""How a feature attaches to the relay: `Feature` is what it offers, `FeatureHost` what
the relay core offers it. The core names no feature; the entry point (`relay_server.cli`)
chooses them::

    relay = Relay(config, ca=ca)
    relay.add_feature(TelemetryService.for_relay(relay.host, telemetry_config))
    relay.add_feature(DesktopService.for_relay(relay.host))
    await relay.start()      # core writers, then each feature's start(), then listen
    ...
    await relay.stop()       # tunnels closed, features' stop() in reverse, writers drained

Lifecycle, in this order:

1. ``Feature.attach(host)`` (from `Relay.add_feature`, before `Relay.start`): register
   channel kinds, control events and metrics; no I/O, no task yet.
2. ``await Feature.start()``: after the relay registered itself, loaded its revocations
   and started its audit writer; before its ports listen, so no agent reaches a
   handler that is not ready.
3. ``await Feature.stop()``: after every tunnel got its GOAWAY and closed and the core's
   tasks were cancelled; features stop in reverse order; then the relay's writers drain,
   so the audit events a feature records while stopping are still written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import Engine

if TYPE_CHECKING:
    from relay_server.agent_link import (
        AgentChannelHandler,
        AgentEventHandler,
        AgentLink,
        ControlContext,
    )
    from relay_server.audit import AuditLog
    from relay_server.config import RelayConfig
    from relay_server.connection import RelayConnection
    from relay_server.metrics import RelayStats
    from relay_server.refusals import RefusalLog
    from relay_server.tasks import TaskSet


class Feature(Protocol):
    """A relay feature (telemetry, desktop; next: diagnostics, updates)."""

    def attach(self, host: FeatureHost) -> None:
        """Register handlers and metrics with `host`. Called once, before `start`."""

    async def start(self) -> None:
        """Start background work. Called by `Relay.start`, before the relay listens."""

    async def stop(self) -> None:
        """Stop background work. Called by `Relay.stop`, after the tunnels closed; must
        also be safe when `start` never ran (the relay failed to start)."""


class FeatureHost:
    """What a feature may use of its relay, and nothing else.

    Read-only: ``config`` (the relay's settings), ``engine``, ``agents`` (connected
    agents by device id, live), ``stats`` (the relay's counters, e.g. handshakes of a
    feature's own port). Shared services: ``audit`` (the batched audit writer: security
    events of every feature go there), ``refusals`` (the rate-limited record of refused
    connections: a feature's own port refuses through it), ``tasks`` (background tasks
    cancelled at stop), ``connection_class`` (the relay's connection factory, for a
    feature's own port, so its connections count against the same per-source limits).
    Registration:
    `serve_channel`, `on_event`, `add_metrics`.
    """

    def __init__(
        self,
        *,
        config: RelayConfig,
        engine: Engine,
        agents: Mapping[str, AgentLink],
        stats: RelayStats,
        audit: AuditLog,
        refusals: RefusalLog,
        tasks: TaskSet,
        connection_class: type[RelayConnection],
        control: ControlContext,
        metrics: CollectorRegistry,
    ) -> None:
        self.config = config
        self.engine = engine
        self.agents = agents
        self.stats = stats
        self.audit = audit
        self.refusals = refusals
        self.tasks = tasks
        self.connection_class = connection_class
        self._control = control
        self._metrics = metrics

    @property
    def relay_id(self) -> str:
        return self.config.relay_id

    def serve_channel(self, kind: str, handler: AgentChannelHandler) -> None:
        """Serve agent-opened channels of `kind` (one feature per kind)."""
        if kind == "control" or kind in self._control.channels:
            raise ValueError(f"channel kind {kind!r} is served already")
        self._control.channels[kind] = handler

    def on_event(self, name: str, handler: AgentEventHandler) -> None:
        """Take the agents' control-channel events called `name` (one handler per name)."""
        if name in self._control.events:
            raise ValueError(f"event {name!r} has a handler already")
        self._control.events[name] = handler

    def add_metrics(self, collector: Collector) -> None:
        """Export `collector` on the relay's ``/metrics`` (read at scrape time)."""
        self._metrics.register(collector)
