"""Slow and idle clients against a TLS port, while a legitimate user's requests are timed.

The attack (issue 14 section 2): ``idle`` TCP connections that never send a byte (no
TLS handshake) and ``slow`` slowloris connections that finish the TLS handshake and
then trickle a request's headers one byte at a time, never ending them. A connection
the server closes is opened again, so the pressure holds for the whole measurement.
It runs in its own thread and event loop; `Attack.wait_full` returns once every socket
has been open at once, so the measurement starts under the whole load.

Used by ``tests/web/test_slow_clients.py`` and ``bench/portal_slow_clients.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

#: Seconds between two header bytes of a slowloris connection.
TRICKLE_S = 0.5
#: The request line and headers a slowloris connection sends, never ending them.
SLOW_REQUEST = b"GET /login HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slowloris\r\nX-a: "


def raise_fd_limit(needed: int) -> None:
    """Lift the soft fd limit to the hard one if ``needed`` sockets would not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Attack:
    """``idle`` silent sockets and ``slow`` header tricklers against ``host:port``."""

    host: str
    port: int
    idle: int
    slow: int
    open_now: int = 0
    opened: int = 0
    _full: threading.Event = field(default_factory=threading.Event)
    _started: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None

    async def _hold(self, context: ssl.SSLContext | None) -> None:
        slow = context is not None
        assert self._stop is not None
        while not self._stop.is_set():
            writer = None
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context)
                self.opened += 1
                self.open_now += 1
                try:
                    if self.open_now >= self.idle + self.slow:
                        self._full.set()
                    if slow:
                        for byte in SLOW_REQUEST * 100:
                            writer.write(bytes([byte]))
                            await writer.drain()
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self._stop.wait(), TRICKLE_S)
                            if self._stop.is_set() or reader.at_eof():
                                break
                    else:
                        # Wait for the server to close (EOF) or for the end of the attack.
                        stop = asyncio.ensure_future(self._stop.wait())
                        eof = asyncio.ensure_future(reader.read(1))
                        await asyncio.wait({stop, eof}, return_when=asyncio.FIRST_COMPLETED)
                        for task in (stop, eof):
                            task.cancel()
                finally:
                    self.open_now -= 1
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.05)  # refused or reset: try again without spinning
            finally:
                if writer is not None:
                    writer.close()

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._started.set()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # an attacker verifies nothing
        tasks = [asyncio.create_task(self._hold(None)) for _ in range(self.idle)]
        tasks += [asyncio.create_task(self._hold(context)) for _ in range(self.slow)]
        await asyncio.gather(*tasks, return_exceptions=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[Attack]:
        """Run the attack in a thread for the ``with`` block; stop and join it after."""
        raise_fd_limit(4 * (self.idle + self.slow) + 1024)
        thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._started.wait()  # the thread has its loop and its stop event
            assert self._loop is not None and self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            thread.join()

    def wait_full(self, timeout: float) -> bool:
        """True once all ``idle + slow`` sockets were open at the same time."""
        return self._full.wait(timeout)


@dataclass
class Timings:
    """Latencies (s) of legitimate requests; a failed request counts as ``timeout``."""

    seconds: list[float] = field(default_factory=list)
    failures: int = 0

    def percentile(self, p: float) -> float:
        if len(self.seconds) < 2:
            return self.seconds[0] if self.seconds else float("inf")
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[int(p) - 1]

    def report(self, prefix: str) -> dict[str, float | int]:
        return {
            f"{prefix}p50_ms": round(self.percentile(50) * 1000, 1),
            f"{prefix}p95_ms": round(self.percentile(95) * 1000, 1),
            f"{prefix}requests": len(self.seconds),
            f"{prefix}failures": self.failures,
        }


def measure(
    steps: list[Callable[[], object]], duration: float, timeout: float, timings: Timings
) -> None:
    """Run ``steps`` in turn, again and again for ``duration`` seconds, timing each.

    A step raising (a timeout included) is recorded as taking ``timeout`` and as a failure.
    """
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        for step in steps:
            started = time.monotonic()
            try:
                step()
            except Exception:
                timings.failures += 1
                timings.seconds.append(timeout)
            else:
                timings.seconds.append(time.monotonic() - started)


def portal_user(
    base_url: str, ca: str, username: str, password: str, device_id: str, timeout: float
) -> list[Callable[[], object]]:
    """A staff member's visit, one step per request: sign-in page, sign in, a device page.

    Each visit starts a new ``requests`` session, so its connections are new ones that
    must get past the attackers' sockets.
    """
    import requests

    state: dict[str, object] = {}
    csrf = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')

    def sign_in_page() -> None:
        session = requests.Session()
        session.trust_env = False
        session.verify = ca
        session.headers["Referer"] = base_url + "/"
        response = session.get(base_url + "/login", timeout=timeout)
        token = csrf.search(response.text)
        assert response.status_code == 200 and token, response.status_code
        state.update(session=session, token=token.group(1))

    def sign_in() -> None:
        session = state["session"]
        assert isinstance(session, requests.Session)
        response = session.post(
            base_url + "/login",
            data={"username": username, "password": password, "csrf_token": state["token"]},
            allow_redirects=False,
            timeout=timeout,
        )
        assert response.status_code == 302, response.status_code

    def device_page() -> None:
        session = state.pop("session")
        assert isinstance(session, requests.Session)
        with session:
            response = session.get(f"{base_url}/devices/{device_id}", timeout=timeout)
        assert response.status_code == 200 and device_id in response.text, response.status_code

    return [sign_in_page, sign_in, device_page]
