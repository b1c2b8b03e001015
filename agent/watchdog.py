"""systemd service integration: sd_notify and a loop-health watchdog (R1).

The notify protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).
That is a dozen lines, so we write them instead of depending on `sdnotify`
(unmaintained since 2019, and it swallows every error) or `systemd-python`
(needs libsystemd headers to build on the device).

WATCHDOG=1 is sent by a task that measures how late the event loop wakes it:
if the loop is blocked or badly starved, the ping is not sent and systemd, after
``WatchdogSec``, kills and restarts the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; a no-op when not started by systemd with Type=notify."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            address = ""  # unset, or a vsock:// address we do not support
        self.address = address
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram. Returns False if not sent."""
        if not self.address:
            return False
        payload = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(payload)
        except OSError as exc:
            # systemd gone (shutdown) or socket unreadable: nothing useful to do but say so.
            logger.warning("! sd_notify %s failed: %s", fields[0].split("=")[0], exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={_one_line(status)}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={_one_line(status)}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def ping(self) -> bool:
        return self.notify("WATCHDOG=1")


def _one_line(text: str) -> str:
    return text.replace("\n", " ")[:200]


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WatchdogSec (as systemd recommends), or None if no watchdog is asked for."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. we are a child of the service)
    return int(usec) / 1e6 / 2


async def watchdog_loop(
    notifier: Notifier,
    interval: float,
    healthy: Callable[[], bool] = lambda: True,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Ping every `interval` s while the loop wakes us on time and `healthy()` holds.

    A wake-up more than a third of the interval late means the loop was blocked
    (or the machine is starved); we skip that ping. Two skipped pings in a row
    exceed WatchdogSec and systemd restarts us, which is the point.
    """
    max_lag = interval / 3
    while True:
        started = clock()
        await asyncio.sleep(interval)
        lag = clock() - started - interval
        if lag > max_lag:
            logger.warning("! event loop %.3f s late; watchdog ping withheld", lag)
        elif not healthy():
            logger.warning("! agent unhealthy; watchdog ping withheld")
        else:
            notifier.ping()
