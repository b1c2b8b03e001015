"""`TelemetryService`: the relay's telemetry, attached to a `Relay` at startup.

Wiring (what ``relay_server.cli`` does)::

    relay = Relay(config, ca=ca)
    relay.add_feature(TelemetryService.for_relay(relay.host, load_telemetry_config(path)))
    # attach: serves "telemetry" and "logs" channels, adds metrics
    await relay.start()              # start: ingestion, alarms, notifications, downsampling
    ...
    await relay.stop()               # stop: after the tunnels closed
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine

from protocol.envelope import MessageError
from relay_server.agent_link import AgentLink, AgentUnavailable
from relay_server.audit import AuditLog
from relay_server.features import FeatureHost
from relay_server.tasks import TaskSet
from relay_server.telemetry.alarms import AlarmDesk
from relay_server.telemetry.channel import TelemetryChannels
from relay_server.telemetry.config import TelemetryServerConfig
from relay_server.telemetry.ingest import Ingestor
from relay_server.telemetry.notify import Notifier
from relay_server.telemetry.uploads import UploadReceiver
from store.db import make_sessionmaker, session_scope
from store.telemetry.series import DOWNSAMPLE_BATCH, downsample
from store.telemetry.uploads import refuse_log_upload, request_log_upload

log = logging.getLogger(__name__)

#: A rule's log fetch waits this long for the agent's answer to the instruction.
FETCH_TIMEOUT = 60.0


class TelemetryService:
    """Ingestion, alarms, notifications and log uploads of one relay."""

    def __init__(
        self,
        engine: Engine,
        config: TelemetryServerConfig,
        *,
        relay_id: str,
        agents: Mapping[str, AgentLink],
        audit: AuditLog,
    ) -> None:
        self.config = config
        self._sessions = make_sessionmaker(engine)
        self._audit = audit
        self._agents = agents
        self.notifier = Notifier(engine, config)
        self.alarms = AlarmDesk(
            engine, config, relay_id=relay_id, notifier=self.notifier, fetch_logs=self.fetch_logs
        )
        self.ingestor = Ingestor(engine)
        self.channels = TelemetryChannels(
            engine, audit=audit, ingestor=self.ingestor, alarms=self.alarms
        )
        self.uploads = UploadReceiver(engine, config, audit=audit)
        self._tasks = TaskSet()

    @classmethod
    def for_relay(cls, host: FeatureHost, config: TelemetryServerConfig) -> TelemetryService:
        return cls(
            host.engine, config, relay_id=host.relay_id, agents=host.agents, audit=host.audit
        )

    def attach(self, host: FeatureHost) -> None:
        """Serve the agent-opened ``telemetry`` and ``logs`` channels; export metrics."""
        host.serve_channel("telemetry", self.channels.serve)
        host.serve_channel("logs", self.uploads.serve)
        host.add_metrics(TelemetryCollector(self))

    async def start(self) -> None:
        await self.ingestor.start()
        await self.alarms.start()
        self._tasks.spawn(self.alarms.run(), name="telemetry-alarms")
        self._tasks.spawn(self.notifier.run(), name="telemetry-notify")
        self._tasks.spawn(self._downsampling(), name="telemetry-downsample")

    async def stop(self) -> None:
        """Stop the periodic work, then drain the writers: what ingestion took is
        written, then the alarms it raised."""
        await self._tasks.cancel_all()
        await self.ingestor.stop()
        await self.alarms.stop()

    async def _downsampling(self) -> None:
        while True:
            await asyncio.sleep(self.config.downsample_interval)
            try:
                while await asyncio.to_thread(self._downsample_step) == DOWNSAMPLE_BATCH:
                    pass
            except Exception:
                log.exception(
                    "! downsampling failed; next attempt in %.0f s", self.config.downsample_interval
                )

    def _downsample_step(self) -> int:
        with session_scope(self._sessions) as session:
            return downsample(session, now=datetime.now(UTC))

    async def fetch_logs(self, device_id: str, source: str | None, rule_id: int | None) -> None:
        """A rule's ``fetch logs``: record the request, instruct the agent if it is here."""
        link = self._agents.get(device_id)
        if link is None:
            log.info("= fetch logs of %s: not connected to this relay", device_id)
            return
        upload_id, instruction = await asyncio.to_thread(
            self._request_upload, device_id, source or "", rule_id
        )
        if not source:
            instruction.pop("source")  # the agent picks its only configured log
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                reply = await link.instruct(instruction)
        except (AgentUnavailable, MessageError, TimeoutError) as exc:
            log.info("= fetch logs of %s not delivered: %s", device_id, type(exc).__name__)
            return
        if not reply.ok:
            error = reply.error or "error"
            await asyncio.to_thread(self._refused, upload_id, error)
            self._audit.record(
                "telemetry.logs_refused",
                f"the device refused a rule's log upload: {error}",
                outcome="failure",
                device_id=device_id,
                upload=upload_id,
                error=error,
            )

    def _request_upload(
        self, device_id: str, source: str, rule_id: int | None
    ) -> tuple[str, dict[str, Any]]:
        with session_scope(self._sessions) as session:
            upload, instruction = request_log_upload(
                session,
                device_id=device_id,
                source=source or "default",
                requested_by=f"rule:{rule_id}" if rule_id is not None else "relay",
                reason="rule",
            )
            return upload.id, instruction

    def _refused(self, upload_id: str, error: str) -> None:
        with session_scope(self._sessions) as session:
            refuse_log_upload(session, upload_id, error)


class TelemetryCollector:
    """Prometheus view of the telemetry counters (read at scrape time)."""

    def __init__(self, service: TelemetryService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        s = self._service
        yield _counter(
            "outlink_telemetry_messages",
            "Telemetry batches and records by outcome",
            ["what", "outcome"],
            s.channels.stats,
        )
        yield _counter(
            "outlink_telemetry_alarm_firings",
            "Rule/urgent firings by result",
            ["result"],
            s.alarms.stats,
        )
        yield _counter(
            "outlink_telemetry_notifications",
            "Notifications by channel and status",
            ["channel", "status"],
            s.notifier.stats,
        )
        yield _counter(
            "outlink_telemetry_uploads", "Log uploads by outcome", ["outcome"], s.uploads.stats
        )
        ingest = s.ingestor.stats
        yield GaugeMetricFamily(
            "outlink_telemetry_ingest_seconds", "Time spent writing telemetry", value=ingest.seconds
        )
        yield CounterMetricFamily(
            "outlink_telemetry_ingest_flushes", "Ingestion transactions", value=ingest.batches
        )


def _counter(
    name: str, documentation: str, labels: list[str], stats: Mapping[Any, int]
) -> CounterMetricFamily:
    """One labelled counter family from a ``{label value(s): count}`` mapping."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, n in sorted(stats.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], n)
    return family
