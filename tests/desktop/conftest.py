"""A real X server (Xvfb) and a real program on it (tests/desktop/tkapp.py).

Both are session-scoped: Xvfb takes ~0.3 s to start and Tk ~0.5 s, and every test
works on its own region of the screen or its own input sentinel, so sharing is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import UNIT

from .tkapp import HEIGHT, WIDTH

TKAPP = Path(__file__).with_name("tkapp.py")
X11_SOCKETS = Path("/tmp/.X11-unix")

Event = dict[str, Any]


def _free_display() -> int:
    for n in range(90, 1000):
        if not Path(f"/tmp/.X{n}-lock").exists() and not (X11_SOCKETS / f"X{n}").exists():
            return n
    raise RuntimeError("no free X display number")


def _wait_for(condition: Callable[[], bool], timeout: float, proc: subprocess.Popen[Any]) -> bool:
    """Poll ``condition`` until true; False if ``proc`` exited first or time ran out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture(scope="session")
def xdisplay() -> Iterator[str]:
    """``":N"`` of a private Xvfb 1280x800x24 without TCP, killed at the end."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed")
    for _ in range(5):  # another process may grab the number between check and start
        n = _free_display()
        proc = subprocess.Popen(
            ["Xvfb", f":{n}", "-screen", "0", f"{WIDTH}x{HEIGHT}x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_for((X11_SOCKETS / f"X{n}").exists, 10 * UNIT, proc):
            try:
                yield f":{n}"
            finally:
                proc.terminate()
                proc.wait(timeout=10 * UNIT)
            return
        proc.kill()
        proc.wait()
    pytest.fail("Xvfb did not start")


class App:
    """The Tk test program: send it commands, wait for the events it reports."""

    def __init__(self, display: str) -> None:
        env = {**os.environ, "DISPLAY": display}
        self.proc = subprocess.Popen(
            [sys.executable, str(TKAPP)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.events: queue.Queue[Event] = queue.Queue()
        self._ids = 0
        threading.Thread(target=self._read, daemon=True, name="tkapp-reader").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def expect(self, predicate: Callable[[Event], bool], timeout: float = 10 * UNIT) -> list[Event]:
        """Events up to and including the first one matching ``predicate``."""
        seen: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"no matching event within {timeout}s; saw {seen}") from None
            seen.append(event)
            if predicate(event):
                return seen

    def drain(self) -> None:
        """Forget events reported so far."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.events.get_nowait()

    def command(self, **cmd: Any) -> None:
        """Run a command and wait until the X server has executed its drawing."""
        assert self.proc.stdin is not None
        self._ids += 1
        ident = self._ids
        self.proc.stdin.write(json.dumps({**cmd, "id": ident}) + "\n")
        self.proc.stdin.flush()
        self.expect(lambda e: e["event"] == "done" and e["id"] == ident)

    def fill(self, x: int, y: int, w: int, h: int, color: str) -> None:
        self.command(cmd="fill", x=x, y=y, w=w, h=h, color=color)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # EOF on stdin ends the program
        try:
            self.proc.wait(timeout=10 * UNIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(scope="session")
def app(xdisplay: str) -> Iterator[App]:
    """The Tk program, up, focused and painted."""
    program = App(xdisplay)
    try:
        program.expect(lambda e: e["event"] == "ready", timeout=20 * UNIT)
        yield program
    finally:
        program.close()
