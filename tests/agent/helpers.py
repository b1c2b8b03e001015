"""Real helpers for agent tests: a tinyproxy subprocess and a TLS listener that records bytes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import UNIT

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
PROXY_USER = "agent"
PROXY_PASSWORD = "s3cret-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tinyproxy:
    port: int
    log: list[str] = field(default_factory=list)

    def url(self, user: str | None = PROXY_USER, password: str = PROXY_PASSWORD) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def connects(self) -> int:
        """CONNECT requests tinyproxy has logged so far."""
        return sum(1 for line in self.log if "CONNECT " in line and "Request" in line)


@contextlib.contextmanager
def tinyproxy(directory: Path) -> Iterator[Tinyproxy]:
    """Run Debian's tinyproxy on 127.0.0.1 with Basic auth; yield once it accepts connections."""
    if not Path(TINYPROXY).exists():
        pytest.skip("tinyproxy is not installed (apt-get install -y tinyproxy)")
    for _ in range(5):  # the port may be taken between free_port() and bind(); retry
        proxy = Tinyproxy(free_port())
        conf = directory / "tinyproxy.conf"
        conf.write_text(
            f"Port {proxy.port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 50\n"
            f"Allow 127.0.0.1\nBasicAuth {PROXY_USER} {PROXY_PASSWORD}\nLogLevel Info\n"
        )
        process = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(conf)],
            stdout=subprocess.PIPE,  # -d logs to stdout, line by line
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()

        def pump(
            p: subprocess.Popen[str] = process,
            t: Tinyproxy = proxy,
            ready: threading.Event = ready,
        ) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                t.log.append(line)
                if "Accepting connections" in line:
                    ready.set()
            ready.set()  # exited: let the waiter see it

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        ready.wait(10 * UNIT)
        if process.poll() is None:
            break
        reader.join()
        assert process.stdout is not None
        process.stdout.close()
    else:
        pytest.fail("tinyproxy did not start:\n" + "".join(proxy.log))
    try:
        yield proxy
    finally:
        process.terminate()
        process.wait(10 * UNIT)
        reader.join(10 * UNIT)
        assert process.stdout is not None
        process.stdout.close()


class RecordingTLSServer:
    """A raw TLS listener that records decrypted application bytes from each client.

    Used to prove the agent sends nothing to a relay it does not trust: TLS
    handshake records are not application data; anything decrypted after a
    completed handshake is. `finished` is set each time a connection ends.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.received = bytearray()
        self.tcp_connections = 0
        self.handshakes_done = 0
        self.handshakes_failed = 0
        self.finished = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RecordingTLSServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tcp_connections += 1
        try:
            await writer.start_tls(self.context, ssl_handshake_timeout=5 * UNIT)
        except (OSError, ssl.SSLError, TimeoutError):
            self.handshakes_failed += 1
        else:
            self.handshakes_done += 1
            try:
                while data := await reader.read(65536):
                    self.received += data
            except (OSError, ssl.SSLError):
                pass
        finally:
            writer.close()
            self.finished.set()


class Blackhole:
    """A TCP forwarder that can start silently dropping everything on live connections.

    `drop()` models a path that loses packets without FIN or RST (a dead NAT entry,
    a pulled cable upstream): bytes are read and discarded, nothing is closed. New
    connections after `drop()` are forwarded normally.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._dropping: set[asyncio.Event] = set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Blackhole:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for writer in self._writers:
            writer.close()
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def drop(self) -> None:
        for event in self._dropping:
            event.set()
        self._dropping.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        dropping = asyncio.Event()
        self._dropping.add(dropping)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not dropping.is_set():
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )
