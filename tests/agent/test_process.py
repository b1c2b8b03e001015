"""The REAL agent process (`python -m agent run`) against a real TLS relay.

R19 (no listening socket of any kind, checked on the live process with psutil),
R32 (runs niced), R1 (sd_notify READY/WATCHDOG/STOPPING over a real AF_UNIX
datagram socket), SIGTERM -> clean tunnel close, and a relay restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from agent.status import read_status
from tests.agent.conftest import Fleet
from tests.agent.relay_stub import StubRelay
from tests.conftest import UNIT
from tunnel import ErrorCode

T = 20 * UNIT  # a cold Python start plus imports fits easily
REPO = Path(__file__).resolve().parents[2]


def write_config(fleet: Fleet, tmp_path: Path, url: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
relay_urls = ["{url}"]
ca_file = "{fleet.ca_file}"
identity_dir = "{fleet.identity_dir("process-" + tmp_path.name)}"
data_dir = "{tmp_path / "data"}"
proxy = "none"
log_level = "DEBUG"
"""
    )
    return path


def listening_sockets(pid: int) -> list[str]:
    """Every socket of `pid` that could accept or receive unsolicited traffic."""
    found = []
    for conn in psutil.Process(pid).net_connections(kind="all"):
        if conn.family == socket.AF_UNIX:
            # A bound unix socket has a path (or abstract name); socketpairs and
            # client sockets (e.g. to NOTIFY_SOCKET) have an empty local address.
            if conn.laddr or conn.status == psutil.CONN_LISTEN:
                found.append(f"unix {conn}")
        elif conn.status == psutil.CONN_LISTEN:
            found.append(f"tcp listen {conn}")
        elif conn.type == socket.SOCK_DGRAM and not conn.raddr:
            found.append(f"udp bound {conn}")
        elif conn.type == socket.SOCK_STREAM and not conn.raddr:
            found.append(f"tcp unconnected {conn}")
    return found


@pytest.fixture
async def relay(fleet: Fleet) -> AsyncIterator[StubRelay]:
    stub = await StubRelay(fleet).start()
    yield stub
    if stub._server is not None:
        await stub.stop()


@pytest.fixture
def notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    return sock


async def next_notification(sock: socket.socket, wanted: str) -> str:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(T):
        while True:
            message = (await loop.sock_recv(sock, 4096)).decode()
            if wanted in message.splitlines():
                return message


async def test_live_agent_process(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, notify_socket: socket.socket
) -> None:
    config = write_config(fleet, tmp_path, relay.url)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": str(int(1_000_000 * UNIT)),  # ping every 0.5 s
    }
    env.pop("WATCHDOG_PID", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "--config", str(config), env=env, cwd=tmp_path
    )
    try:
        assert "STATUS=" in await next_notification(notify_socket, "READY=1")
        link = await relay.wait_link(0, T)
        await next_notification(notify_socket, "WATCHDOG=1")

        # R19: connected and serving, yet nothing to connect TO.
        assert listening_sockets(process.pid) == []
        # R32: it runs at lowered priority.
        assert psutil.Process(process.pid).nice() >= 10
        assert link.identity.device_id == read_status(tmp_path / "data")["device_id"]

        # The relay restarts (graceful: GOAWAY retry_after 0.5 s): back within seconds.
        await relay.stop(goaway_ms=500)
        await relay.start()
        link = await relay.wait_link(1, 5 * UNIT)
        assert listening_sockets(process.pid) == []

        # SIGTERM: STOPPING=1, the tunnel is closed cleanly (NO_ERROR), exit status 0.
        process.send_signal(signal.SIGTERM)
        await next_notification(notify_socket, "STOPPING=1")
        assert await asyncio.wait_for(process.wait(), T) == 0
        await asyncio.wait_for(link.ended.wait(), T)
        assert link.tunnel.error_code is ErrorCode.NO_ERROR
        assert read_status(tmp_path / "data")["state"] == "stopped"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        notify_socket.close()


async def test_status_command_reports_connection_and_exit_code(
    fleet: Fleet, tmp_path: Path, relay: StubRelay
) -> None:
    config = write_config(fleet, tmp_path, relay.url)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    async def status() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            "status",
            "--config",
            str(config),
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), T)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await status()
    assert code == 1 and "no status yet" in out
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "--config", str(config), env=env
    )
    try:
        await relay.wait_link(0, T)
        async with asyncio.timeout(T):
            while not read_status(tmp_path / "data").get("connected"):
                await asyncio.sleep(0.05 * UNIT)  # written right after the hello reply
        code, out = await status()
        assert code == 0
        assert relay.url in out
    finally:
        agent.terminate()
        await asyncio.wait_for(agent.wait(), T)


def test_the_listening_check_is_not_vacuous(tmp_path: Path) -> None:
    """The same check on THIS process flags each kind of listening/bound socket."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "s"))
    unix.listen()
    try:
        found = " ".join(listening_sockets(os.getpid()))
        assert "tcp listen" in found
        assert "udp bound" in found
        assert "unix" in found
    finally:
        for s in (tcp, udp, unix):
            s.close()
