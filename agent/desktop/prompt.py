"""The agent's side of the device's windows: run the consent prompt and the session
indicator (`prompt_app`, `indicator_app`) as child processes on the device's display.

Everything is asyncio subprocess I/O: no thread waits on a window. The agent writes
the request on the program's stdin and keeps stdin open (closing it, or the agent
dying, closes the window), reads what the person did from its stdout, and ends it with
SIGTERM (SIGKILL after :data:`KILL_GRACE`) when the agent decides: at the consent
timeout, when a decision came from elsewhere, when the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any, Final

from .policy import Session

logger = logging.getLogger(__name__)

PROMPT_APP: Final = "agent.desktop.prompt_app"
INDICATOR_APP: Final = "agent.desktop.indicator_app"

KILL_GRACE: Final = 2.0
"""Seconds a window program has to exit after SIGTERM before it is killed."""

MAX_LINE: Final = 4096
"""A line from a window program is a tiny JSON object; a longer one is a bug."""

MAX_STDERR: Final = 4096
"""What is kept of a failed program's stderr for the log (e.g. "couldn't connect to
display")."""


class WindowProgram:
    """One running window program. :meth:`start`, then :meth:`read` its lines, and
    :meth:`close` it (idempotent; safe whether or not it is still running)."""

    def __init__(self, proc: asyncio.subprocess.Process, what: str) -> None:
        self._proc = proc
        self.what = what
        self._closing = False

    @classmethod
    async def start(
        cls, module: str, request: dict[str, Any], display: str, environ: Mapping[str, str]
    ) -> WindowProgram:
        """Run ``python -m module`` on ``display`` with ``request``. Raises ``OSError``."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**environ, "DISPLAY": display},
            limit=MAX_LINE,
        )
        program = cls(proc, module.rsplit(".", 1)[-1])
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        with contextlib.suppress(ConnectionError):  # it died at once: read() reports it
            await proc.stdin.drain()
        logger.debug("= %s started (pid %d) on %s", program.what, proc.pid, display)
        return program

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def read(self) -> dict[str, Any] | None:
        """The next JSON object the program printed; ``None`` once it exited."""
        assert self._proc.stdout is not None
        try:
            line = await self._proc.stdout.readline()
        except ValueError:  # longer than MAX_LINE
            line = b""
        if line:
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict):
                logger.debug("< %s %s", self.what, message)
                return message
            logger.warning("! %s printed something unexpected; closing it", self.what)
        await self._reap()
        return None

    async def close(self) -> None:
        """End the program (SIGTERM, then SIGKILL) and reap it."""
        self._closing = True
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            try:
                async with asyncio.timeout(KILL_GRACE):
                    await self._proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
        await self._reap()

    async def _reap(self) -> None:
        code = await self._proc.wait()
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        err = b""
        if self._proc.stderr is not None:
            with contextlib.suppress(ValueError, ConnectionError):
                err = await self._proc.stderr.read(MAX_STDERR)
        if code != 0 and not self._closing:
            text = err.decode(errors="replace").strip().splitlines()
            logger.warning("! %s exited with %s: %s", self.what, code, text[-1] if text else "")


def prompt_request(session: Session, timeout_s: float) -> dict[str, Any]:
    """What the consent prompt shows: who, from where, what, why, and the time left."""
    return {
        "name": session.requester.name,
        "organisation": session.requester.organisation,
        "mode": str(session.mode),
        "reason": session.reason,
        "timeout_s": round(max(0.0, timeout_s), 3),
    }


def indicator_request(session: Session) -> dict[str, Any]:
    return {"name": session.requester.name, "mode": str(session.mode)}


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What a window program inherits: X authority, locale, paths. Not the rest of the
    agent's environment (proxy credentials have no business in a window)."""
    keep = ("XAUTHORITY", "HOME", "LANG", "LC_ALL", "PATH", "PYTHONPATH")
    return {k: environ[k] for k in keep if k in environ}
