"""Nothing lost, nothing twice, with real processes: the relay (``python -m
relay_server``), the agent (``python -m agent run``) and the
device simulator (``python -m sim``), killed with SIGKILL in the middle of a stream.

The check is by content: every coded line the simulator wrote is one event row, once
(a line read twice would be a second row under a new sequence number)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from agent.telemetry.config import DEFAULT_PATTERN
from pki.identity import DeviceIdentity
from store.db import make_engine, session_scope, upgrade
from store.telemetry.events import TelemetryEvent
from store.telemetry.records import TelemetryRecord
from tests.conftest import UNIT
from tests.pki_fixtures import FleetPKI
from tests.relay.conftest import register_device
from tests.telemetry.conftest import free_port

T = 30 * UNIT
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


class Stack:
    """Relay, agent and simulator processes sharing one temporary directory."""

    def __init__(self, directory: Path, pki: FleetPKI) -> None:
        self.dir = directory
        self.db_url = f"sqlite:///{directory / 'outlink.db'}"
        upgrade(self.db_url)
        self.engine: Engine = make_engine(self.db_url)
        cert = register_device(pki, self.engine)
        assert isinstance(cert.identity, DeviceIdentity)
        self.device_id = cert.identity.device_id
        identity = directory / "identity"
        identity.mkdir(mode=0o700)
        (identity / "device.pem").write_bytes(cert.cert_file.read_bytes())
        (identity / "device.key").write_bytes(cert.key_file.read_bytes())
        (identity / "device.key").chmod(0o600)
        (identity / "ca.pem").write_bytes(pki.ca_file.read_bytes())
        self.port, self.ops_port = free_port(), free_port()
        self.log = directory / "app.log"
        (directory / "relay.toml").write_text(
            f"""relay_id = "relay-proc"
db_url = "{self.db_url}"
[listen]
port = {self.port}
[ops]
port = {self.ops_port}
[tls]
cert = "{pki.server.cert_file}"
key = "{pki.server.key_file}"
ca = "{pki.ca_file}"
ca_dir = "{pki.directory}"
[presence]
flush_interval = 0.1
[log]
format = "text"
"""
        )
        (directory / "relay-telemetry.toml").write_text(f'upload_dir = "{directory}/uploads"\n')
        (directory / "agent.toml").write_text(
            f"""relay_urls = ["wss://localhost:{self.port}/agent"]
ca_file = "{pki.ca_file}"
identity_dir = "{identity}"
data_dir = "{directory / "agent"}"
proxy = "none"
open_timeout = 5.0
[backoff]
base = 0.1
cap = 0.5
herd_window = 0.3
"""
        )
        (directory / "telemetry.toml").write_text(
            f"""poll_interval = 0.5
send_interval = 0.05
tail_interval = 0.05
temperatures = false
[[sources]]
name = "app"
path = "{self.log}"
from_start = true
[severity]
codes = {{ "I*" = "routine", "W*" = "warning", "E9*" = "urgent" }}
"""
        )
        self.relay: asyncio.subprocess.Process | None = None
        self.agent: asyncio.subprocess.Process | None = None
        self.sim: asyncio.subprocess.Process | None = None

    async def spawn(self, *args: str) -> asyncio.subprocess.Process:
        with open(self.dir / f"{args[0]}.log", "ab") as log:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                *args,
                cwd=self.dir,
                env=ENV,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )

    async def start_relay(self) -> None:
        self.relay = await self.spawn(
            "relay_server",
            "--config",
            "relay.toml",
            "--telemetry",
            "relay-telemetry.toml",
        )

        def ready() -> bool:
            try:
                url = f"http://127.0.0.1:{self.ops_port}/readyz"
                with urllib.request.urlopen(url, timeout=UNIT) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        await self.until_sync(ready, "relay ready")

    async def start_agent(self) -> None:
        self.agent = await self.spawn(
            "agent", "run", "--config", "agent.toml", "--telemetry", "telemetry.toml"
        )

    async def start_sim(self, ticks: int, interval: float = 0.01, *more: str) -> None:
        self.sim = await self.spawn(
            "sim",
            "--log",
            str(self.log),
            "--interval",
            str(interval),
            "--ticks",
            str(ticks),
            "--seed",
            "3",
            "--error-rate",
            "0.1",
            *more,
        )

    async def until_sync(self, check: object, what: str, timeout: float = T) -> None:
        """Poll another process's observable state (no event reaches us from there)."""
        assert callable(check)
        try:
            async with asyncio.timeout(timeout):
                while not await asyncio.to_thread(check):
                    await asyncio.sleep(0.05 * UNIT)
        except TimeoutError:
            pytest.fail(f"timed out waiting for: {what}; see {self.dir}/*.log")

    def events(self) -> int:
        with session_scope(self.engine) as session:
            return int(session.scalar(select(func.count(TelemetryEvent.id))) or 0)

    def written(self) -> Counter[tuple[float, str]]:
        """(timestamp, code) of every coded line in the simulator's log."""
        pattern = re.compile(DEFAULT_PATTERN)
        out: Counter[tuple[float, str]] = Counter()
        for line in self.log.read_text().splitlines():
            match = pattern.match(line)
            if match:
                moment = datetime.strptime(match["ts"], "%Y-%m-%d %H:%M:%S.%f")
                out[(round(moment.timestamp(), 3), match["code"])] += 1
        return out

    def stored(self) -> Counter[tuple[float, str]]:
        with session_scope(self.engine) as session:
            rows = session.execute(select(TelemetryEvent.ts, TelemetryEvent.code)).all()
        return Counter((round(ts.timestamp(), 3), code) for ts, code in rows)

    async def kill(self, proc: asyncio.subprocess.Process | None) -> None:
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def stop(self) -> None:
        for proc in (self.sim, self.agent, self.relay):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), T)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        self.engine.dispose()

    async def all_delivered(self) -> None:
        """The simulator finished and every line it wrote is stored."""
        assert self.sim is not None
        await asyncio.wait_for(self.sim.wait(), T)
        expected = sum(self.written().values())
        await self.until_sync(lambda: self.events() >= expected, f"{expected} events stored")


@pytest.fixture
async def stack(tmp_path: Path, fleet_pki: FleetPKI) -> AsyncIterator[Stack]:
    s = Stack(tmp_path, fleet_pki)
    try:
        yield s
    finally:
        await s.stop()


async def test_relay_killed_and_restarted_mid_stream_every_record_exactly_once(
    stack: Stack,
) -> None:
    await stack.start_relay()
    await stack.start_agent()
    await stack.start_sim(ticks=400)
    await stack.until_sync(lambda: stack.events() > 100, "events flowing")
    await stack.kill(stack.relay)  # a crash: no GOAWAY, no flush
    before = stack.events()
    await stack.until_sync(lambda: sum(stack.written().values()) > before + 100, "more lines")
    await stack.start_relay()
    await stack.all_delivered()
    assert stack.stored() == stack.written()
    with session_scope(stack.engine) as session:
        metrics = session.scalar(select(func.count()).where(TelemetryRecord.kind == "metrics"))
    assert metrics and metrics > 0


async def test_agent_killed_mid_batch_every_record_exactly_once(stack: Stack) -> None:
    await stack.start_relay()
    await stack.start_agent()
    await stack.start_sim(ticks=400)
    await stack.until_sync(lambda: stack.events() > 100, "events flowing")
    await stack.kill(stack.agent)  # SIGKILL while batches are in flight
    await stack.start_agent()
    await stack.all_delivered()
    assert stack.stored() == stack.written()


async def test_the_demo_a_failing_device_alarms_mails_calls_the_webhook_and_sends_logs(
    stack: Stack, fleet_pki: FleetPKI
) -> None:
    """What the one-command start shows: every process real, wired as the docs say."""
    from protocol.aio.client import ServiceClient
    from store.telemetry.rules import create_rule
    from store.telemetry.uploads import downloadable_upload, request_log_upload

    smtp_port, hook_port = free_port(), free_port()
    (stack.dir / "secret").write_text("d" * 32)
    receivers = await stack.spawn(
        "sim.receivers",
        "--smtp-port",
        str(smtp_port),
        "--webhook-port",
        str(hook_port),
        "--secret-file",
        str(stack.dir / "secret"),
        "--out",
        str(stack.dir / "received.jsonl"),
    )
    (stack.dir / "relay-telemetry.toml").write_text(
        f'upload_dir = "{stack.dir}/uploads"\nrules_refresh = 0.2\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\n'
        f'[webhooks.demo]\nurl = "http://127.0.0.1:{hook_port}/"\nsecret = "{"d" * 32}"\n'
    )
    with open(stack.dir / "telemetry.toml", "a") as f:
        f.write(f'[[uploads]]\nname = "app"\npath = "{stack.log}*"\n')
    with session_scope(stack.engine) as session:
        create_rule(
            session,
            name="urgent",
            text="when severity >= urgent then alarm urgent, email service@localhost, webhook demo",
            actor="test",
        )
    control = stack.dir / "control"
    control.write_text("ok")
    try:
        await stack.start_relay()
        await stack.start_agent()
        await stack.start_sim(0, 0.2, "--control", str(control))
        await stack.until_sync(lambda: stack.events() > 0, "telemetry arrives")
        control.write_text("fail E9001")
        received = stack.dir / "received.jsonl"

        def notified() -> bool:
            lines = received.read_text().splitlines() if received.exists() else []
            entries = [json.loads(line) for line in lines]
            return {(e["channel"], e.get("verified")) for e in entries} == {
                ("email", None),
                ("webhook", True),
            }

        await stack.until_sync(notified, "e-mail and verified webhook")
        context = fleet_pki.client_context(fleet_pki.portal)
        async with await ServiceClient.connect(
            f"wss://localhost:{stack.port}/service", context
        ) as portal:
            with session_scope(stack.engine) as session:
                upload, instruction = request_log_upload(
                    session, device_id=stack.device_id, source="app", requested_by="eve"
                )
                upload_id = upload.id
            await portal.rpc("instruct", device=stack.device_id, instruction=instruction)

        def fetched() -> bool:
            with session_scope(stack.engine) as session:
                return downloadable_upload(session, upload_id, stack.device_id) is not None

        await stack.until_sync(fetched, "the device's logs")
    finally:
        receivers.send_signal(signal.SIGTERM)
        await asyncio.wait_for(receivers.wait(), T)
