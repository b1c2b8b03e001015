"""`TelemetryAgent`: the agent's telemetry, built from its configuration and run beside
the connection manager.

Wiring (what ``outlink-agent run`` does)::

    registry = Registry()
    register_builtin(registry)
    manager = ConnectionManager(config, registry, ...)
    telemetry = TelemetryAgent(
        tconfig, Path(config.data_dir), connected=manager.connected, tunnel=lambda: manager.tunnel
    )
    telemetry.register(registry)                     # before manager.run(): the first hello
    task = asyncio.create_task(telemetry.run())      # cancel it to stop

`run` audits every registered instruction (it wraps the registry's handlers, so call
it after everything registered), opens the spool, and runs the poller, the sender and
the uploader until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.audit import AuditLog
from agent.control import Registry
from agent.telemetry.collectors import SystemCollector
from agent.telemetry.config import TelemetryConfig
from agent.telemetry.poller import Poller
from agent.telemetry.sender import Sender
from agent.telemetry.sources import PropertiesFile, SourceContext, make_sources
from agent.telemetry.spool import Dropped, Spool
from agent.telemetry.uploads import ACTION, Uploads
from telemetry.scrub import Scrubber
from tunnel.aio import Tunnel

log = logging.getLogger(__name__)

#: The action that makes the agent send what it has spooled now (for tests and support).
FLUSH_ACTION = "telemetry_flush"


class TelemetryAgent:
    """Everything telemetry on the agent. `register`, then `run()`.

    `connected` is set while a link is up (``ConnectionManager.connected``) and
    `tunnel()` returns that link's tunnel. Pass the agent's `audit` log to share it
    with other features (one file, one chain; appends lock the file anyway).
    """

    def __init__(
        self,
        config: TelemetryConfig,
        data_dir: Path,
        *,
        connected: asyncio.Event,
        tunnel: Callable[[], Tunnel | None],
        audit: AuditLog | None = None,
    ) -> None:
        self.config = config.resolved(data_dir)
        self.audit = audit or AuditLog(Path(self.config.audit_file))
        self.scrubber = Scrubber(self.config.scrub)
        self._connected = connected
        self._tunnel = tunnel
        self._registry: Registry | None = None
        self.spool: Spool | None = None
        self.sender: Sender | None = None
        self.poller: Poller | None = None
        #: Set once `run` has opened the spool and built the sender and poller.
        self.started = asyncio.Event()
        self.uploads = Uploads(
            self.config.uploads,
            Path(self.config.staging_dir),
            self.scrubber,
            tunnel=tunnel,
            connected=connected,
            audit=self.audit,
        )

    def register(self, registry: Registry) -> None:
        """Add the telemetry actions to the agent's instruction registry."""
        registry.add_action(ACTION, self.uploads.handle)
        registry.add_action(FLUSH_ACTION, self._flush)
        self._registry = registry

    async def _flush(self, instruction: dict[str, Any]) -> dict[str, Any]:
        if self.sender is not None:
            self.sender.flush()
        stats = await asyncio.to_thread(self.spool.stats) if self.spool is not None else None
        return {"spooled": stats.records if stats is not None else 0}

    async def run(self) -> None:
        config = self.config
        if self._registry is not None:
            self.audit.wrap_actions(self._registry)
        await asyncio.to_thread(self.audit.append, "agent", "started")
        self.spool = await asyncio.to_thread(
            Spool,
            Path(config.spool_file),
            max_bytes=config.spool_max_bytes,
            max_age=config.spool_max_age,
        )
        self.spool.on_drop = self._dropped
        self.sender = Sender(
            self.spool, tunnel=self._tunnel, connected=self._connected, audit=self.audit
        )
        self.sender.on_up = self.uploads.kick  # interrupted uploads resume on the new link
        context = SourceContext(config.severity)
        collector = await asyncio.to_thread(
            SystemCollector,
            disks=config.disks,
            processes=config.processes,
            temperatures=config.temperatures,
        )
        self.poller = Poller(
            spool=self.spool,
            sender=self.sender,
            collector=collector,
            sources=make_sources(config.sources, context),
            properties=PropertiesFile(Path(config.properties_file), dict(config.properties)),
            scrubber=self.scrubber,
            audit=self.audit,
            poll_interval=config.poll_interval,
            send_interval=config.send_interval,
            tail_interval=config.tail_interval,
            properties_interval=config.properties_interval,
        )
        self.started.set()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.poller.run(), name="telemetry-poller")
                group.create_task(self.sender.run(), name="telemetry-sender")
                group.create_task(self.uploads.run(), name="log-uploader")
                if config.upload_interval > 0:
                    group.create_task(self._scheduled_uploads(), name="log-schedule")
        finally:
            with contextlib.suppress(Exception):
                self.audit.append("agent", "stopped")
            self.spool.close()

    async def _scheduled_uploads(self) -> None:
        while True:
            await asyncio.sleep(self.config.upload_interval)
            await self.uploads.stage_all()

    def _dropped(self, drop: Dropped) -> None:
        """Spool drops are device events worth a line in the local audit log."""
        self.audit.append(
            "spool", "dropped", reason=drop.reason, routine=drop.routine, urgent=drop.urgent
        )
