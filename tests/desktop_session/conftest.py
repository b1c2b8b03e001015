"""A stage for desktop sessions through the real relay: relay in-process (real TLS, fresh
SQLite), the real agent in-process (its `ConnectionManager` and `DesktopService`; only
the X11 screen and input are replaced by a fixed picture and a recording sink; the
clipboard is the real one of the test X server), and viewer WebSockets as a browser
opens them (Origin, subprotocol, ticket).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from agent.config import AgentConfig, BackoffConfig
from agent.connection import ConnectionManager
from agent.control import Registry
from agent.desktop.answers import AnswerBox
from agent.desktop.policy import DesktopPolicy
from agent.desktop.service import DesktopService
from desktop import wire
from desktop.capture import Frame, Monitor
from desktop.pacing import PacerSettings
from desktop.streamer import StreamerSettings
from protocol.desktop import Mode
from relay_server.config import ViewerConfig
from relay_server.desktop.viewer import SUBPROTOCOL
from store import desktop
from store.db import session_scope
from store.desktop import Actor, DesktopSession
from tests.conftest import UNIT
from tests.desktop.conftest import xdisplay  # noqa: F401  (the indicator window's display)
from tests.desktop_session.world import World, seed
from tests.pki_fixtures import CertFiles, FleetPKI
from tests.relay.conftest import Fleet, register_device, running_relay, wait_for

ORIGIN = "https://portal.test"
PORTAL = Actor("portal-test")

# The device's screen: a left half, a right half, and a square that only a lossless
# (or well-encoded) picture gets right.
WIDTH, HEIGHT = 160, 96
LEFT, RIGHT, SQUARE = (200, 40, 40), (30, 60, 190), (20, 180, 60)


def picture() -> bytes:
    """BGRX pixels of the fixed screen."""
    rows = []
    for y in range(HEIGHT):
        row = bytearray()
        for x in range(WIDTH):
            r, g, b = LEFT if x < WIDTH // 2 else RIGHT
            if 20 <= x < 52 and 20 <= y < 52:
                r, g, b = SQUARE
            row += bytes((b, g, r, 0))
        rows.append(bytes(row))
    return b"".join(rows)


class FixedScreen:
    """A `ScreenSource` showing one unchanging picture (one monitor); with ``noise`` set
    (a test's monkeypatch), a big screen of fresh random pixels at every grab instead:
    a worst case for the encoder that keeps the stream busy."""

    noise: tuple[int, int] | None = None

    def __init__(self, _display: str) -> None:
        self._size = self.noise or (WIDTH, HEIGHT)
        self._pixels = picture() if self.noise is None else b""
        self._monitor = Monitor(1, 0, 0, *self._size, primary=True)

    def monitors(self) -> list[Monitor]:
        return [Monitor(0, 0, 0, *self._size), self._monitor]

    def grab(self, index: int) -> Frame:
        width, height = self._size
        pixels = self._pixels or os.urandom(width * height * 4)
        return Frame(self._monitor, width, height, pixels)

    def close(self) -> None:
        pass


@dataclass
class RecordingSink:
    """An `InputSink` that records what it was asked to inject."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pointer(self, x: int, y: int, buttons: int) -> None:
        with self.lock:
            self.events.append(("pointer", x, y, buttons))

    def wheel(self, dx: int, dy: int) -> None:
        with self.lock:
            self.events.append(("wheel", dx, dy))

    def key(self, keysym: int, down: bool) -> None:
        with self.lock:
            self.events.append(("key", keysym, down))

    def release_all(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Stage:
    fleet: Fleet
    engine: Engine
    world: World
    device: CertFiles
    agent: ConnectionManager
    desktop: DesktopService
    sink: RecordingSink
    channel_metas: list[dict[str, Any]]
    display: str

    @property
    def relay_url(self) -> str:
        return f"wss://127.0.0.1:{self.fleet.desktop.viewers.port}"

    def request(self, user: str = "eng", mode: Mode = Mode.CONTROL) -> str:
        """A request stored as the portal stores it (the agent is not asked)."""
        with session_scope(self.engine) as session:
            return desktop.create_session(
                session,
                device_id=self.world.device_a,
                user_id=self.world.users[user],
                username=user,
                mode=mode,
                reason="test",
                consent_timeout_s=30,
                now=datetime.now(UTC),
            ).id

    async def accepted(self, user: str = "eng", mode: Mode = Mode.CONTROL) -> str:
        """A session the real agent accepted (consent off on this device) and the relay
        recorded from the agent's event."""
        sid = self.request(user, mode)
        client = await self.fleet.service()
        reply = await client.rpc(
            "instruct",
            device=self.world.device_a,
            instruction={
                "action": "desktop.request",
                "session_id": sid,
                "mode": str(mode),
                "reason": "test",
                "requester": {"user": user, "name": user.title(), "organisation": "Vendor"},
            },
        )
        assert reply["result"] == {"state": "accepted", "consent_required": False}
        await self.wait_state(sid, "accepted")
        return sid

    def ticket(self, sid: str, now: datetime | None = None) -> str:
        with session_scope(self.engine) as session:
            row = session.get(DesktopSession, sid)
            assert row is not None
            return desktop.issue_ticket(session, row, now or datetime.now(UTC))

    def state(self, sid: str) -> DesktopSession:
        with session_scope(self.engine) as session:
            row = session.get(DesktopSession, sid)
            assert row is not None
            return row

    async def wait_state(self, sid: str, state: str, timeout: float = 10 * UNIT) -> None:
        async with asyncio.timeout(timeout):
            while self.state(sid).state != state:
                await self.fleet.desktop.events.flush()
                await asyncio.sleep(0.02)

    async def viewer(
        self,
        ticket: str | None,
        *,
        origin: str | None = ORIGIN,
        query: str = "",
        max_queue: int = 16,
    ) -> ClientConnection:
        url = f"{self.relay_url}/view?" + (f"ticket={ticket}" if ticket is not None else "")
        ws = await connect(
            url + query,
            ssl=self.fleet.pki.client_context(),
            origin=Origin(origin) if origin is not None else None,
            subprotocols=[SUBPROTOCOL],
            max_size=wire.MAX_MESSAGE,
            open_timeout=5 * UNIT,
            close_timeout=UNIT,
            compression=None,
            max_queue=max_queue,
        )
        self.fleet._clients.append(ws.close)
        return ws


def audit_kinds(engine: Engine) -> list[str]:
    from store.portal import AuditEvent

    with session_scope(engine) as session:
        return list(session.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)))


@pytest.fixture
def relay_db(tmp_path: Path) -> Engine:
    from store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'relay.db'}"
    upgrade(url)
    return make_engine(url)


@pytest.fixture
async def stage(
    fleet_pki: FleetPKI,
    relay_db: Engine,
    tmp_path: Path,
    xdisplay: str,  # noqa: F811
) -> AsyncIterator[Stage]:
    async with running_relay(
        fleet_pki, relay_db, viewer=ViewerConfig(allowed_origins=(ORIGIN,), port=0)
    ) as fleet:
        cert = register_device(fleet_pki, relay_db, "acme", "lab")
        assert cert.identity is not None
        world = seed(relay_db, device_a=cert.identity.device_id)  # type: ignore[union-attr]
        identity = tmp_path / "agent" / "identity"
        identity.mkdir(parents=True)
        shutil.copy(cert.cert_file, identity / "device.pem")
        shutil.copy(cert.key_file, identity / "device.key")
        shutil.copy(fleet_pki.ca_file, identity / "ca.pem")
        config = AgentConfig(
            relay_urls=(f"wss://localhost:{fleet.relay.port}/agent",),
            ca_file=str(fleet_pki.ca_file),
            identity_dir=str(identity),
            data_dir=str(tmp_path / "agent"),
            proxy="none",
            backoff=BackoffConfig(base=0.1, cap=0.5),
        )
        sink = RecordingSink()
        service = DesktopService(
            DesktopPolicy(consent_required=False, display=xdisplay),
            AnswerBox(tmp_path / "agent" / "answers"),
            settings=StreamerSettings(pacer=PacerSettings(max_fps=30, cpu_budget=1.0)),
            source_factory=FixedScreen,
            sink_factory=lambda _d: sink,
            cursor_factory=lambda _d: None,
        )
        registry = Registry()
        service.register(registry)
        metas: list[dict[str, Any]] = []
        serve_channel = registry.channels["desktop"]

        async def recording(request: Any) -> None:
            metas.append(dict(request.meta))
            await serve_channel(request)

        registry.channels["desktop"] = recording
        agent = ConnectionManager(config, registry)
        runner = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(10 * UNIT):
                await agent.connected.wait()
            await wait_for(lambda: world.device_a in fleet.relay.registry.agents)
            link = fleet.relay.registry.agents[world.device_a]
            await wait_for(lambda: link.control is not None)
            yield Stage(fleet, relay_db, world, cert, agent, service, sink, metas, xdisplay)
        finally:
            await service.aclose()
            agent.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 5 * UNIT)
    relay_db.dispose()


async def next_binary(ws: ClientConnection, timeout: float = 5 * UNIT) -> bytes:
    """The next desktop message from the relay (the relay's own text messages skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                return message


async def first_frame(ws: ClientConnection) -> wire.FrameUpdate:
    while True:
        message = wire.decode_device_message(await next_binary(ws))
        if isinstance(message, wire.FrameUpdate):
            return message


def device_clipboard_is(display: str, expected: bytes, within: float) -> bool:
    """Whether pasting on the device (``xclip -o``, Debian package xclip) gives
    ``expected`` within `within` seconds: another program, asked until it does. Each
    ask is bounded too: xclip waits for ever on an owner that never answers."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            done = subprocess.run(
                ["xclip", "-o", "-selection", "clipboard"],
                capture_output=True,
                env={**os.environ, "DISPLAY": display},
                timeout=max(0.1, left),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        if done.stdout == expected:
            return True
        time.sleep(0.05)  # polling another program's state: there is no event to wait on
    return False
