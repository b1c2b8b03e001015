"""What a remote-desktop system under test is to bench/desktop_stream.py, and the
process plumbing both systems share.

A :class:`Stack` is started on an X display (a context manager), names the server-side
processes whose CPU is charged to it, and opens its browser viewer in a Playwright page
until the remote screen is on the page's canvas. The benchmark does the rest, the same
way for every stack. A stack that cannot run here raises :class:`Unavailable` with the
reason, which the report carries instead of figures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psutil

if TYPE_CHECKING:
    from playwright.sync_api import Page

STOP_GRACE = 5.0
"""SIGTERM first, SIGKILL after this many seconds."""


class Unavailable(Exception):
    """A stack cannot be measured on this machine or tree; the text says what is missing."""


class Stack(Protocol):
    name: str

    def processes(self) -> dict[str, psutil.Process]:
        """Server-side processes charged with the stack's CPU (their descendants too),
        by name (the figures show each one's share)."""
        ...

    def open_viewer(self, page: Page, timeout: float) -> None:
        """Navigate ``page`` to the viewer and return once it shows the remote screen
        (the probe in the page reads a frame marker off the canvas)."""
        ...


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    procs: Sequence[Child] = (),
) -> None:
    """Poll ``condition`` every 20 ms; raise naming ``what`` on timeout, or at once if
    one of ``procs`` died meanwhile (with the end of its log)."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}): {proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


class Child:
    """A server process with its output in ``log``; :meth:`stop` ends it (idempotent)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # its own process group: stop() reaches forked helpers
            )
        self.process = psutil.Process(self.popen.pid)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        # Forked helpers (websockify's per-connection processes) left in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def cpu_seconds(roots: Sequence[psutil.Process]) -> float:
    """User + system CPU of ``roots`` and all their descendants so far, reaped children
    included (``children_*``), so a delta over a window is what the tree used in it."""
    total = 0.0
    for root in roots:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total
