"""The README's first command, as a new user runs it: everything comes up, twice is harmless."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, func, select

from store.db import make_engine, session_scope
from store.models import Device, Presence
from tests.conftest import UNIT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stack(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


def _pids(home: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (home / "run").glob("*.pid")}


def _wait_online(engine: Engine, want: int) -> tuple[int, int]:
    """(devices, online) once ``want`` are online; the relay writes presence in batches."""
    deadline = time.monotonic() + 10 * UNIT
    while True:
        with session_scope(engine) as session:
            online = session.scalar(select(func.count()).where(Presence.online.is_(True)))
            devices = session.scalar(select(func.count(Device.id)))
        if online == want or time.monotonic() > deadline:
            return int(devices or 0), int(online or 0)
        time.sleep(0.1)


def test_up_add_device_up_again_down(tmp_path: Path) -> None:
    home = tmp_path / "var"
    env = {
        **os.environ,
        "OUTLINK_HOME": str(home),
        "OUTLINK_STACK_RELAY_PORT": str(_free_port()),
        "OUTLINK_STACK_OPS_PORT": str(_free_port()),
        "OUTLINK_STACK_PORTAL_PORT": str(_free_port()),
        "OUTLINK_STACK_VIEWER_PORT": str(_free_port()),
        "OUTLINK_STACK_SMTP_PORT": str(_free_port()),
        "OUTLINK_STACK_WEBHOOK_PORT": str(_free_port()),
    }
    try:
        first = _stack(home, env, "up")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "device " in first.stdout and ": connected" in first.stdout, first.stdout
        password_line = next(line for line in first.stdout.splitlines() if "password:" in line)
        assert "user: admin" in password_line and "(changed" not in password_line
        pids = _pids(home)
        expected = {"relay", "portal", "agent", "screen", "simulator", "console", "receivers"}
        assert set(pids) == expected

        # The portal answers over TLS with a certificate from the install's own CA.
        context = ssl.create_default_context(cafile=str(home / "portal/staff-ca/ca.pem"))
        port = env["OUTLINK_STACK_PORTAL_PORT"]
        with urllib.request.urlopen(f"https://localhost:{port}/login", context=context) as resp:
            assert resp.status == 200

        # The relay publishes the agent's presence in the shared database (batched, so
        # poll the other process's writes until they show).
        engine = make_engine(f"sqlite:///{home / 'outlink.db'}")
        assert _wait_online(engine, 1) == (1, 1)

        # A second device enrolled with a one-time token, as the README shows.
        db_url = f"sqlite:///{home / 'outlink.db'}"
        token = subprocess.run(
            [sys.executable, "-m", "pki", "token", "create", "--db", db_url,
             "--customer", "acme", "--site", "lab"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        added = _stack(home, env, "add-device", token, "ct-02")
        assert added.returncode == 0, added.stdout + added.stderr
        assert _wait_online(engine, 2) == (2, 2)
        reused = _stack(home, env, "add-device", token, "ct-03")
        assert reused.returncode != 0, "a token works once"

        pids = _pids(home)
        second = _stack(home, env, "up")
        assert second.returncode == 0, second.stdout + second.stderr
        assert _pids(home) == pids, "a second `up` must not restart or duplicate processes"
        with session_scope(engine) as session:
            assert session.scalar(select(func.count(Device.id))) == 2
        engine.dispose()
    finally:
        down = _stack(home, env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in pids.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
