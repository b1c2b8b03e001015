"""Start, find and stop the stack's background processes through pid files.

A pid file alone can point at a recycled pid, so a process counts as ours only if
its environment still carries the marker we started it with.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

MARKER = "OUTLINK_STACK_NAME"
STOP_GRACE_S = 10.0  # long enough for the relay to send GOAWAY and close tunnels


def _pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def find(run_dir: Path, name: str) -> psutil.Process | None:
    """The live process started as ``name``, or None."""
    path = _pid_file(run_dir, name)
    try:
        pid = int(path.read_text())
        proc = psutil.Process(pid)
        if (
            proc.is_running()
            and proc.status() != psutil.STATUS_ZOMBIE
            and proc.environ().get(MARKER) == name
        ):
            return proc
    except (FileNotFoundError, ValueError, psutil.Error):
        pass
    path.unlink(missing_ok=True)
    return None


def start(
    run_dir: Path, log_dir: Path, name: str, argv: list[str], env: dict[str, str] | None = None
) -> psutil.Process:
    """Start ``argv`` detached (own session), logging to ``log_dir/name.log``; idempotent."""
    existing = find(run_dir, name)
    if existing is not None:
        return existing
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {}), MARKER: name},
        )
    _pid_file(run_dir, name).write_text(str(proc.pid))
    return psutil.Process(proc.pid)


def stop(run_dir: Path, name: str) -> bool:
    """SIGTERM, then SIGKILL after a grace period. True if something was running."""
    proc = find(run_dir, name)
    if proc is None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE_S)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_GRACE_S)
    _pid_file(run_dir, name).unlink(missing_ok=True)
    return True


def wait_until(predicate: object, timeout: float, what: str) -> None:
    """Poll a cheap readiness check of another process (we cannot get an event from it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
