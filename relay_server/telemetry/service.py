"""`TelemetryService`: the relay's telemetry, attached to a `Relay` at startup.

Wiring (what the relay's ``_serve`` does, see ``relay_server.telemetry.__main__``)::

    relay = Relay(config, ca=ca)
    telemetry = TelemetryService.for_relay(relay, load_telemetry_config(path))
    telemetry.attach(relay)          # serves "telemetry" and "logs" channels, adds metrics
    await telemetry.start()          # ingestion, alarms, notifications, downsampling
    await relay.start()
    ...
    await relay.stop()
    await telemetry.stop()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine

from protocol.envelope import MessageError
from relay_server.agent_link import AgentLink, AgentUnavailable
from relay_server.tasks import TaskSet
from relay_server.telemetry.alarms import AlarmDesk
from relay_server.telemetry.channel import TelemetryChannels
from relay_server.telemetry.config import TelemetryServerConfig
from relay_server.telemetry.ingest import Ingestor
from relay_server.telemetry.notify import Notifier
from relay_server.telemetry.uploads import UploadReceiver
from store.db import make_sessionmaker, session_scope
from store.portal import append_audit
from store.telemetry.series import DOWNSAMPLE_BATCH, downsample
from store.telemetry.uploads import refuse_log_upload, request_log_upload

if TYPE_CHECKING:
    from relay_server.server import Relay

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
    ) -> None:
        self.config = config
        self._sessions = make_sessionmaker(engine)
        self._relay_id = relay_id
        self._agents = agents
        self.notifier = Notifier(engine, config)
        self.alarms = AlarmDesk(
            engine, config, relay_id=relay_id, notifier=self.notifier, fetch_logs=self.fetch_logs
        )
        self.ingestor = Ingestor(engine)
        self.channels = TelemetryChannels(
            engine, relay_id=relay_id, ingestor=self.ingestor, alarms=self.alarms
        )
        self.uploads = UploadReceiver(engine, config, relay_id=relay_id)
        self._tasks = TaskSet()

    @classmethod
    def for_relay(cls, relay: Relay, config: TelemetryServerConfig) -> TelemetryService:
        return cls(
            relay.engine, config, relay_id=relay.config.relay_id, agents=relay.registry.agents
        )

    def attach(self, relay: Relay) -> None:
        """Serve the agent-opened ``telemetry`` and ``logs`` channels; export metrics."""
        relay.control.channels["telemetry"] = self.channels.serve
        relay.control.channels["logs"] = self.uploads.serve
        relay.metrics_registry.register(TelemetryCollector(self))

    async def start(self) -> None:
        self._tasks.spawn(self.ingestor.run(), name="telemetry-ingest")
        self._tasks.spawn(self.alarms.run(), name="telemetry-alarms")
        self._tasks.spawn(self.notifier.run(), name="telemetry-notify")
        self._tasks.spawn(self._downsampling(), name="telemetry-downsample")

    async def stop(self) -> None:
        await self._tasks.cancel_all()

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
            await asyncio.to_thread(self._refused, device_id, upload_id, reply.error or "error")

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

    def _refused(self, device_id: str, upload_id: str, error: str) -> None:
        with session_scope(self._sessions) as session:
            refuse_log_upload(session, upload_id, error)
            append_audit(
                session,
                "telemetry.logs_refused",
                outcome="failure",
                actor=f"relay:{self._relay_id}",
                device_id=device_id,
                summary=f"the device refused a rule's log upload: {error}",
                details={"upload": upload_id, "error": error},
            )


class TelemetryCollector:
    """Prometheus view of the telemetry counters (read at scrape time)."""

    def __init__(self, service: TelemetryService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        s = self._service
        yield _counter("outlink_telemetry_messages", "Telemetry batches and records by outcome",
                       ["what", "outcome"], s.channels.stats)
        yield _counter("outlink_telemetry_alarm_firings", "Rule/urgent firings by result",
                       ["result"], s.alarms.stats)
        yield _counter("outlink_telemetry_notifications", "Notifications by channel and status",
                       ["channel", "status"], s.notifier.stats)
        yield _counter("outlink_telemetry_uploads", "Log uploads by outcome",
                       ["outcome"], s.uploads.stats)
        ingest = s.ingestor.stats
        yield GaugeMetricFamily(
            "outlink_telemetry_ingest_seconds", "Time spent writing telemetry", value=ingest.seconds
        )
        yield CounterMetricFamily(
            "outlink_telemetry_ingest_flushes", "Ingestion transactions", value=ingest.flushes
        )


def _counter(name: str, documentation: str, labels: list[str],
             stats: Mapping[Any, int]) -> CounterMetricFamily:
    """One labelled counter family from a ``{label value(s): count}`` mapping."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, n in sorted(stats.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], n)
    return family
