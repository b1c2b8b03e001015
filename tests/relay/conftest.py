"""Relay fixtures: a real relay in-process on 127.0.0.1 (ephemeral ports, real TLS with
certificates from `pki/`, a fresh SQLite database) and real tunnel clients.

Tests run on the relay's own event loop class, so the shared-TLS-buffer loop is what
every relay test exercises.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from websockets.asyncio.client import ClientConnection, connect

import jsonlog
from pki.fleet import create_device, ensure_site, record_certificate
from pki.identity import DeviceIdentity
from protocol.aio.client import ServiceClient
from protocol.envelope import MessageError, Reply, decode, encode_reply, encode_request
from protocol.ids import DeviceId
from relay_server.config import (
    KeepaliveConfig,
    LimitsConfig,
    ListenConfig,
    OpsConfig,
    PresenceConfig,
    RelayConfig,
    RevocationConfig,
    ShutdownConfig,
    TLSConfig,
)
from relay_server.desktop.service import DesktopService
from relay_server.eventloop import RelayEventLoop
from relay_server.server import Relay
from store.db import make_engine, session_scope, upgrade
from tests.conftest import UNIT
from tests.pki_fixtures import CertFiles, FleetPKI
from tunnel import SUBPROTOCOLS, Role, Settings
from tunnel.aio import Channel, ChannelError, OpenHandler, Tunnel, websocket_options
from tunnel.frames import GoAwayFrame, decode_frame


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Relay tests run on the loop the relay runs on in production."""
    return {"relay_loop": RelayEventLoop}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The process's log as `outlink-relay` writes it: JSON lines, here into a buffer."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = jsonlog.configure("DEBUG", "json", stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def relay_db(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def relay_config(pki: FleetPKI, db_url: str, **sections: Any) -> RelayConfig:
    """A relay config for tests: ephemeral ports, fast timers (in UNITs), roomy limits."""
    base = RelayConfig(
        relay_id="relay-test",
        db_url=db_url,
        listen=ListenConfig(port=0, handshake_timeout=5 * UNIT),
        ops=OpsConfig(port=0),
        tls=TLSConfig(
            cert=str(pki.server.cert_file),
            key=str(pki.server.key_file),
            ca=str(pki.ca_file),
            ca_dir=str(pki.directory),
        ),
        limits=LimitsConfig(connect_rate_per_source=0, max_connections_per_source=0),
        keepalive=KeepaliveConfig(),
        presence=PresenceConfig(
            flush_interval=0.05 * UNIT, last_seen_interval=0.2 * UNIT, heartbeat_interval=UNIT
        ),
        revocation=RevocationConfig(refresh_interval=10.0),
        shutdown=ShutdownConfig(retry_after_min_ms=100, retry_after_max_ms=900, grace=0.5 * UNIT),
    )
    return dataclasses.replace(base, **sections)


def register_device(
    pki: FleetPKI, engine: Engine, customer: str = "acme", site: str = "lab", **kwargs: Any
) -> CertFiles:
    """A device registered in the database, with a certificate on disk (`kwargs` go to
    `FleetPKI.device_cert`: lifetime, not_before, foreign...)."""
    with session_scope(engine) as session:
        device_id = DeviceId(create_device(session, ensure_site(session, customer, site)).id)
    cert = pki.device_cert(device_id, customer, site, **kwargs)
    with session_scope(engine) as session:
        record_certificate(session, cert.issued.cert, "device", device_id=device_id)
    return cert


@dataclass
class Fleet:
    """The test fleet: PKI, database, and a running relay with the desktop feature."""

    pki: FleetPKI
    engine: Engine
    relay: Relay
    desktop: DesktopService
    _clients: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.relay.port}"

    def device(self, customer: str = "acme", site: str = "lab", **kwargs: Any) -> CertFiles:
        return register_device(self.pki, self.engine, customer, site, **kwargs)

    def context(self, cert: CertFiles | None) -> ssl.SSLContext:
        return self.pki.client_context(cert)

    async def ws(
        self, path: str, cert: CertFiles | None, *, subprotocols: list[str] | None = None
    ) -> ClientConnection:
        """A raw WebSocket to the relay (closed at teardown)."""
        ws = await connect(
            self.url + path,
            ssl=self.context(cert),
            subprotocols=list(SUBPROTOCOLS if subprotocols is None else subprotocols),  # type: ignore[arg-type]
            open_timeout=5 * UNIT,
            close_timeout=UNIT,
            **websocket_options(),
        )
        self._clients.append(ws.close)
        return ws

    async def agent(
        self,
        cert: CertFiles,
        *,
        on_open: OpenHandler | None = None,
        settings: Settings | None = None,
    ) -> Tunnel:
        """A real agent-side tunnel on /agent, running until teardown (or closed)."""
        ws = await self.ws("/agent", cert)
        tunnel = Tunnel(ws, role=Role.CLIENT, settings=settings, on_open=on_open, name="agent")
        runner = asyncio.create_task(tunnel.run())

        async def stop() -> None:
            await tunnel.close()
            await runner

        self._clients.append(stop)
        return tunnel

    async def service(self, cert: CertFiles | None = None) -> ServiceClient:
        client = await ServiceClient.connect(
            self.url + "/service", self.context(cert or self.pki.portal), open_timeout=5 * UNIT
        )
        self._clients.append(client.close)
        return client

    async def wait_registered(self, device_id: str, present: bool = True) -> None:
        """Wait until the relay's registry has (or no longer has) `device_id`."""
        await wait_for(lambda: (device_id in self.relay.registry.agents) == present)

    async def aclose(self) -> None:
        for close in reversed(self._clients):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(), 5 * UNIT)


def device_id_of(cert: CertFiles) -> str:
    """The device id a device certificate names."""
    assert isinstance(cert.identity, DeviceIdentity)
    return cert.identity.device_id


async def wait_for(predicate: Callable[[], bool], timeout: float = 5 * UNIT) -> None:
    """Wait for a condition that the relay's own event loop makes true.

    Checks after every loop iteration (``sleep(0)`` yields once); never sleeps a fixed
    time, so it is as fast as the event that makes the condition true.
    """
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running_relay(
    pki: FleetPKI,
    engine: Engine,
    config: RelayConfig | None = None,
    *,
    signs: bool = True,
    **sections: Any,
) -> AsyncIterator[Fleet]:
    """A started relay (stopped gracefully on exit) with the desktop feature, as
    `outlink-relay` runs it (telemetry: `tests.telemetry`); `signs=False`: it holds no CA key."""
    config = config or relay_config(pki, str(engine.url), **sections)
    relay = Relay(config, engine=engine, ca=pki.ca if signs else None)
    desktop = DesktopService.for_relay(relay.host)
    relay.add_feature(desktop)
    await relay.start()
    fleet = Fleet(pki, engine, relay, desktop)
    try:
        yield fleet
    finally:
        await fleet.aclose()
        await relay.stop()


@pytest.fixture
async def fleet(fleet_pki: FleetPKI, relay_db: Engine) -> AsyncIterator[Fleet]:
    async with running_relay(fleet_pki, relay_db) as f:
        yield f


class ControlPeer:
    """The agent's end of a control channel, minimal: requests out, instruct answered.

    `answer(instruction) -> bytes | None` builds the reply to an instruct (None: stay
    silent); by default the agent echoes the instruction back as its result.
    """

    def __init__(self, channel: Channel, answer: Callable[[Any, dict[str, Any]], bytes | None]):
        self.channel = channel
        self._answer = answer
        self._replies: dict[Any, asyncio.Future[Reply]] = {}
        self._next = 1
        self.instructions: list[dict[str, Any]] = []
        self.unparsed: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        tunnel: Tunnel,
        answer: Callable[[Any, dict[str, Any]], bytes | None] | None = None,
    ) -> ControlPeer:
        channel = await tunnel.open_channel("control")
        return cls(channel, answer or (lambda rid, ins: encode_reply(rid, result={"echo": ins})))

    async def request(self, op: str, **args: Any) -> Reply:
        rid = self._next
        self._next += 1
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._replies[rid] = future
        await self.channel.send(encode_request(rid, op, **args))
        async with asyncio.timeout(5 * UNIT):
            return await future

    async def _read(self) -> None:
        with contextlib.suppress(ChannelError):
            async for data in self.channel:
                try:
                    msg = decode(data, 1 << 20)
                except MessageError:  # {"id": null, ...}: an answer to unparseable input
                    self.unparsed.append(json.loads(data))
                    continue
                if isinstance(msg, Reply):
                    future = self._replies.pop(msg.id, None)
                    if future is not None:
                        future.set_result(msg)
                else:
                    self.instructions.append(msg.args["instruction"])
                    reply = self._answer(msg.id, msg.args["instruction"])
                    if reply is not None:
                        await self.channel.send(reply)


async def next_goaway(ws: ClientConnection) -> GoAwayFrame:
    """Read raw tunnel frames from `ws` until a GOAWAY arrives (a raw agent's view)."""
    async with asyncio.timeout(5 * UNIT):
        while True:
            frame = decode_frame(await ws.recv(decode=False))
            if isinstance(frame, GoAwayFrame):
                return frame
