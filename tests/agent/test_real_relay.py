"""End to end with every part real: `outlink-pki`, the relay process, tinyproxy, the agent.

The agent enrols and then runs THROUGH tinyproxy with Basic auth (R15), answers an
instruction sent by a service client through the relay (R24), and, once its device
is revoked, is disconnected and raises the needs-a-human alarm.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
import urllib.request
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.status import read_status
from pki.tls import client_context
from protocol.aio.client import RpcError, ServiceClient
from tests.agent.helpers import Tinyproxy, free_port, tinyproxy
from tests.conftest import UNIT

T = 30 * UNIT
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


async def spawn(command: str, cwd: Path, **kwargs: Any) -> asyncio.subprocess.Process:
    """Start ``python -m <command>`` (e.g. "agent run --config x.toml") in `cwd`."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", *shlex.split(command), cwd=cwd, env=ENV, **kwargs
    )


async def run(command: str, cwd: Path) -> str:
    """Run ``python -m <command>`` to completion; return stdout; fail on a non-zero exit."""
    proc = await spawn(command, cwd, stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), T)
    assert proc.returncode == 0, f"{command}: {err.decode()}"
    return out.decode()


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for another process to reach a state we can only observe by asking."""
    try:
        async with asyncio.timeout(T):
            while not await condition():
                await asyncio.sleep(0.1 * UNIT)
    except TimeoutError:
        pytest.fail(f"timed out waiting for: {what}")


class World:
    def __init__(self, directory: Path, proxy: Tinyproxy) -> None:
        self.dir = directory
        self.proxy = proxy
        self.db = f"sqlite:///{directory / 'outlink.db'}"
        self.port = free_port()
        self.ops_port = free_port()
        self.relay: asyncio.subprocess.Process | None = None
        self.agent: asyncio.subprocess.Process | None = None

    @property
    def agent_config(self) -> Path:
        return self.dir / "agent.toml"

    async def setup(self) -> None:
        await run("pki init --dir ca", self.dir)
        await run(f"pki server-cert --dir ca --dns localhost --db {self.db}", self.dir)
        await run("pki service-cert --dir ca --name portal", self.dir)
        (self.dir / "relay.toml").write_text(
            f"""
relay_id = "relay-e2e"
service_url = "wss://localhost:{self.port}/service"
db_url = "{self.db}"
[listen]
port = {self.port}
[ops]
port = {self.ops_port}
[tls]
cert = "ca/relay.pem"
key = "ca/relay.key"
ca = "ca/ca.pem"
ca_dir = "ca"
[revocation]
refresh_interval = 1.0
[log]
format = "text"
"""
        )
        self.agent_config.write_text(
            f"""
relay_urls = ["wss://localhost:{self.port}/agent"]
ca_file = "ca/ca.pem"
identity_dir = "agent/identity"
data_dir = "agent"
proxy = "{self.proxy.url()}"
log_level = "DEBUG"
"""
        )

    async def start_relay(self) -> None:
        self.relay = await spawn("relay_server --config relay.toml", self.dir)

        async def ready() -> bool:
            def get() -> bool:
                url = f"http://127.0.0.1:{self.ops_port}/readyz"
                try:
                    with urllib.request.urlopen(url, timeout=UNIT) as response:
                        return bool(response.status == 200)
                except OSError:
                    return False

            return await asyncio.to_thread(get)

        await until(ready, "relay ready")

    async def service(self) -> ServiceClient:
        ca = self.dir / "ca"
        ssl = client_context(ca / "ca.pem", ca / "portal.pem", ca / "portal.key")
        return await ServiceClient.connect(f"wss://localhost:{self.port}/service", ssl)

    async def stop(self) -> None:
        for proc in (self.agent, self.relay):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), T)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    with tinyproxy(tmp_path) as proxy:
        w = World(tmp_path, proxy)
        await w.setup()
        await w.start_relay()
        try:
            yield w
        finally:
            await w.stop()


async def test_enrol_run_instruct_and_revoke_through_tinyproxy(world: World) -> None:
    token = (
        await run(f"pki token create --db {world.db} --customer acme --site lab", world.dir)
    ).strip()
    out = await run(f"agent enroll --config {world.agent_config} --token {token}", world.dir)
    device_id = out.split("enrolled as device ")[1].split()[0]
    assert world.proxy.connects() == 1  # enrolment went through the proxy too

    world.agent = await spawn(f"agent run --config {world.agent_config}", world.dir)
    async with await world.service() as portal:

        async def online() -> bool:
            devices = (await portal.rpc("presence"))["devices"]
            return any(d["device_id"] == device_id for d in devices)

        await until(online, "agent online")
        assert world.proxy.connects() == 2  # and the tunnel is a CONNECT through it

        # Presence shows the tunnel; instructions need the control channel the agent
        # opens right after, so retry while the relay says it has none yet.
        answers: list[dict[str, Any]] = []

        async def pinged() -> bool:
            try:
                ping = {"action": "ping"}
                answers.append(await portal.rpc("instruct", device=device_id, instruction=ping))
            except RpcError as exc:
                if exc.code != "offline":
                    raise
                return False
            return True

        await until(pinged, "agent answers instructions")
        result: dict[str, Any] = answers[-1]["result"]
        assert result["pid"] == world.agent.pid

        # Revoked at the database, pushed to the relay: the tunnel is closed at once and
        # the agent, refused from then on, raises the alarm that needs a human.
        await run(f"pki revoke --db {world.db} --device {device_id} --reason test", world.dir)
        await portal.rpc("revoke", device=device_id)

        async def alarmed() -> bool:
            alarms = read_status(world.dir / "agent")["alarms"]
            return any(a["code"] == "client_cert_refused" for a in alarms)

        await until(alarmed, "revocation alarm")
        assert not await online()

    status = await spawn(
        f"agent status --config {world.agent_config} --json", world.dir, stdout=PIPE
    )
    out_bytes, _ = await asyncio.wait_for(status.communicate(), T)
    assert status.returncode == 2  # an alarm needs a human
    assert json.loads(out_bytes)["alarms"][0]["code"] == "client_cert_refused"
