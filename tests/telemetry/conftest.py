"""Telemetry fixtures: the real relay in process with `TelemetryService` attached (real
TLS, certificates from `pki/`, a fresh database), real agents (`ConnectionManager` +
`TelemetryAgent`), a real SMTP server (aiosmtpd) and a real webhook receiver (HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from agent.config import AgentConfig, BackoffConfig
from agent.connection import ConnectionManager
from agent.control import Registry
from agent.identity import IdentityFiles
from agent.telemetry.config import TELEMETRY_FILE, TelemetryConfig
from agent.telemetry.service import TelemetryAgent
from pki.identity import DeviceIdentity
from relay_server.server import Relay
from relay_server.telemetry.config import (
    NotifyConfig,
    SmtpConfig,
    TelemetryServerConfig,
    Webhook,
)
from relay_server.telemetry.service import TelemetryService
from store.db import make_engine, session_scope
from tests.conftest import UNIT
from tests.pki_fixtures import CertFiles, FleetPKI
from tests.relay.conftest import register_device, relay_config

T = 10 * UNIT
WEBHOOK_SECRET = b"w" * 32
R = TypeVar("R")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Signal:
    """Lets a server thread wake the test's event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def fire(self) -> None:
        self._loop.call_soon_threadsafe(self.event.set)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = T) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.event.clear()
                if predicate():
                    return
                await self.event.wait()


class SmtpSink:
    """A real SMTP server (aiosmtpd) that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.signal = Signal()
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content)
        message["X-Rcpt"] = ",".join(envelope.rcpt_tos)
        self.messages.append(message)
        self.signal.fire()
        return "250 OK"

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


class HookSink:
    """A real HTTP server receiving webhook POSTs; `status` is what it answers."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.signal = Signal()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.requests.append((dict(self.headers.items()), body))
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                sink.signal.fire()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HookSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(T)


@dataclass
class RunningAgent:
    device_id: str
    manager: ConnectionManager
    telemetry: TelemetryAgent
    task: asyncio.Task[None]
    data_dir: Path

    async def stop(self) -> None:
        self.manager.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, T)


@dataclass
class World:
    pki: FleetPKI
    engine: Engine
    relay: Relay
    service: TelemetryService
    tmp: Path
    smtp: SmtpSink
    hooks: HookSink
    agents: list[RunningAgent] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.relay.port}"

    def device(self, customer: str = "acme", site: str = "lab") -> CertFiles:
        return register_device(self.pki, self.engine, customer, site)

    def identity_dir(self, cert: CertFiles) -> Path:
        files = IdentityFiles(self.tmp / f"identity-{cert.serial}")
        files.directory.mkdir(mode=0o700)
        shutil.copy(cert.key_file, files.key_file)
        shutil.copy(cert.cert_file, files.cert_file)
        shutil.copy(self.pki.ca_file, files.ca_file)
        return files.directory

    async def agent(
        self, cert: CertFiles | None = None, telemetry: dict[str, Any] | None = None
    ) -> RunningAgent:
        """A real agent (connection manager + telemetry) for `cert`, connected."""
        cert = cert or self.device()
        assert isinstance(cert.identity, DeviceIdentity)
        data_dir = self.tmp / f"agent-{cert.serial}"
        config = AgentConfig(
            relay_urls=(self.url + "/agent",),
            ca_file=str(self.pki.ca_file),
            identity_dir=str(self.identity_dir(cert)),
            data_dir=str(data_dir),
            proxy="none",
            open_timeout=2 * UNIT,
            backoff=BackoffConfig(base=0.05, cap=0.5, herd_window=0.1, goaway_jitter=0.1),
        )
        settings: dict[str, Any] = {
            "poll_interval": 3600.0,
            "send_interval": 3600.0,
            "tail_interval": 0.05,
            "temperatures": False,
            **(telemetry or {}),
        }
        tconfig: TelemetryConfig = TELEMETRY_FILE.parse(settings, base=self.tmp, environ={})
        registry = Registry()
        manager = ConnectionManager(config, registry)
        agent = TelemetryAgent(
            tconfig, data_dir, connected=manager.connected, tunnel=lambda: manager._tunnel
        )
        agent.register(registry)

        async def run() -> None:
            collecting = asyncio.create_task(agent.run())
            try:
                await manager.run()
            finally:
                collecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collecting

        running = RunningAgent(
            cert.identity.device_id, manager, agent, asyncio.create_task(run()), data_dir
        )
        self.agents.append(running)
        await asyncio.wait_for(manager.connected.wait(), T)
        await asyncio.wait_for(agent.started.wait(), T)
        assert agent.sender is not None
        await asyncio.wait_for(agent.sender.channel_up.wait(), T)
        return running

    def db(self, query: Callable[[Session], R]) -> R:
        with session_scope(self.engine) as session:
            return query(session)

    async def until(
        self, condition: Callable[[Session], Any], what: str, timeout: float = T
    ) -> Any:
        """Wait until a database query returns something truthy (other threads write it)."""
        try:
            async with asyncio.timeout(timeout):
                while not (result := await asyncio.to_thread(self.db, condition)):
                    await asyncio.sleep(0.02 * UNIT)
                return result
        except TimeoutError:
            pytest.fail(f"timed out waiting for: {what}")


def server_config(
    tmp: Path, smtp: SmtpSink, hooks: HookSink, **changes: Any
) -> TelemetryServerConfig:
    base = TelemetryServerConfig(
        upload_dir=str(tmp / "uploads"),
        portal_url="https://portal.test/",
        rules_refresh=0.05 * UNIT,
        offline_check=0.05 * UNIT,
        downsample_interval=3600.0,
        smtp=SmtpConfig(host="127.0.0.1", port=smtp.port, sender="outlink@test", timeout=T),
        notify=NotifyConfig(attempts=2, retry_delay=0.05 * UNIT, webhook_timeout=T),
        webhooks={"ops": Webhook(hooks.url, WEBHOOK_SECRET)},
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def telemetry_settings() -> dict[str, Any]:
    """Override in a test module to change the relay's telemetry configuration."""
    return {}


@pytest.fixture
async def world(
    fleet_pki: FleetPKI, tmp_path: Path, telemetry_settings: dict[str, Any], db_url: str
) -> AsyncIterator[World]:
    """A relay with telemetry on a fresh database (SQLite, and PostgreSQL when set up)."""
    url = db_url
    engine = make_engine(url)
    with SmtpSink() as smtp, HookSink() as hooks:
        relay = Relay(relay_config(fleet_pki, url), engine=engine, ca=fleet_pki.ca)
        service = TelemetryService.for_relay(
            relay.host, server_config(tmp_path, smtp, hooks, **telemetry_settings)
        )
        relay.add_feature(service)
        await relay.start()
        w = World(fleet_pki, engine, relay, service, tmp_path, smtp, hooks)
        try:
            yield w
        finally:
            for agent in w.agents:
                await agent.stop()
            await relay.stop()
            # Cancelled awaits leave their worker threads running: let them finish and
            # return their connections before the pool goes.
            await asyncio.get_running_loop().shutdown_default_executor()
            engine.dispose()


def dump_text(engine: Engine) -> str:
    """Every text value of every telemetry table and the audit trail, for leak checks."""
    from sqlalchemy import text

    tables = (
        "telemetry_records",
        "telemetry_events",
        "telemetry_properties",
        "telemetry_alarms",
        "telemetry_alarm_comments",
        "telemetry_notifications",
        "telemetry_log_uploads",
        "audit_events",
    )
    out = []
    with engine.connect() as conn:
        for table in tables:
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                out.append(json.dumps([str(v) for v in row]))
    return "\n".join(out)
