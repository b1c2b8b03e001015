"""sd_notify over a real AF_UNIX datagram socket, and the loop-lag watchdog."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.watchdog import Notifier, watchdog_loop
from tests.conftest import UNIT


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5 * UNIT)
    try:
        yield sock, path
    finally:
        sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_stopping_each_one_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("starting\nup")
    assert received(sock) == "READY=1\nSTATUS=starting up"
    assert n.status("connected to relay-a")
    assert received(sock) == "STATUS=connected to relay-a"
    assert n.stopping()
    assert received(sock) == "STOPPING=1"


def test_abstract_namespace_socket() -> None:
    name = f"outlink-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5 * UNIT)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ping()
        assert received(sock) == "WATCHDOG=1"


def test_without_systemd_everything_is_a_quiet_no_op(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert not Notifier({}).ready("x")
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    # Socket gone (systemd stopping): reported as not sent, never raised.
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ping()


def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval == 15.0
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": "/x"}).watchdog_interval is None


async def test_pings_while_the_loop_is_healthy(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(watchdog_loop(Notifier({"NOTIFY_SOCKET": path}), 0.05 * UNIT))
    try:
        for _ in range(3):
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5 * UNIT)
            assert data == b"WATCHDOG=1"
    finally:
        task.cancel()


async def test_no_ping_when_the_loop_was_blocked_or_unhealthy(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    interval = 0.05 * UNIT
    # A fake clock that jumps: every wake-up looks 10 intervals late, as if the loop hung.
    ticks = iter(range(0, 10**6, 11))

    def late_clock() -> float:
        return next(ticks) * interval

    n = Notifier({"NOTIFY_SOCKET": path})
    blocked = asyncio.create_task(watchdog_loop(n, interval, clock=late_clock))
    unhealthy = asyncio.create_task(watchdog_loop(n, interval, healthy=lambda: False))
    try:
        # Both tasks run many rounds; not one datagram may arrive.
        await asyncio.sleep(20 * interval)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        blocked.cancel()
        unhealthy.cancel()


def test_a_truly_blocked_loop_sends_nothing(notify_socket: tuple[socket.socket, str]) -> None:
    """The real thing: block the event loop thread and check no ping comes out."""
    sock, path = notify_socket
    interval = 0.05 * UNIT

    async def main() -> None:
        task = asyncio.create_task(watchdog_loop(Notifier({"NOTIFY_SOCKET": path}), interval))
        await asyncio.sleep(0)  # let it start its first sleep
        time.sleep(10 * interval)  # the hang
        await asyncio.sleep(interval / 2)  # the late wake-up happens, no ping
        task.cancel()

    asyncio.run(main())
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
