"""A device with desktop sessions on, end to end: the real agent (`ConnectionManager`
+ `DesktopService`) on a real X server with the Tk test program, connected over real
TLS and a real tunnel to the agent tests' stub relay, which also records the agent's
``desktop.state`` events and plays the relay's part of a session (instructions, the
viewer's ``desktop`` channel).

The X server and the Tk program are the desktop tests' fixtures (imported, not
copied); the relay stub is the agent tests'.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.audit import AuditLog
from agent.config import AgentConfig
from agent.connection import ConnectionManager
from agent.control import Registry
from agent.desktop.answers import AnswerBox
from agent.desktop.policy import DesktopPolicy
from agent.desktop.service import DesktopService
from desktop import wire
from desktop.capture import MssSource, ScreenSource
from desktop.clipboard import ClipboardFactory, x11_clipboard
from desktop.pacing import PacerSettings
from desktop.streamer import StreamerSettings
from protocol.envelope import Reply
from tests.agent.conftest import Fleet, fleet  # noqa: F401 - fixtures used here
from tests.agent.relay_stub import Link, StubRelay
from tests.conftest import UNIT
from tests.desktop.conftest import App, app, xdisplay  # noqa: F401 - fixtures used here
from tunnel import Priority
from tunnel.aio import Channel

T = 10 * UNIT

FAST = StreamerSettings(pacer=PacerSettings(max_fps=60, idle_fps=20, cpu_budget=1.0))
"""Tests poll quickly so that "the viewer shows the screen" comes quickly."""


class EventTap:
    """The stub's control channel with the agent's events taken out (the stub does not
    know them); everything else passes through to the stub's own handling."""

    def __init__(self, channel: Channel, events: asyncio.Queue[dict[str, Any]]) -> None:
        self._channel = channel
        self._events = events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[bytes]:
        async for data in self._channel:
            message = json.loads(data)
            if isinstance(message, dict) and message.get("op") == "event":
                self._events.put_nowait(message)
            else:
                yield data


class DesktopRelay(StubRelay):
    def __init__(self, pki: Fleet) -> None:
        super().__init__(pki)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def _serve_control(self, link: Link) -> None:
        link.control = EventTap(link.control, self.events)  # type: ignore[arg-type,assignment]
        await super()._serve_control(link)


class CountingSources:
    """The real screen source, counting constructions: "no capture happened" is
    "no source was ever made"."""

    def __init__(self) -> None:
        self.made: list[ScreenSource] = []

    def __call__(self, display: str) -> ScreenSource:
        source = MssSource(display)
        self.made.append(source)
        return source


@dataclasses.dataclass
class Device:
    """The agent under test and the relay's side of it."""

    relay: DesktopRelay
    link: Link
    service: DesktopService
    sources: CountingSources
    config_file: Path
    display: str

    async def instruct(self, action: str, **fields: Any) -> Reply:
        return await self.relay.instruct(self.link, {"action": action, **fields}, T)

    async def request(self, mode: str = "control", **fields: Any) -> tuple[str, Reply]:
        session_id = str(uuid.uuid4())
        reply = await self.instruct(
            "desktop.request",
            session_id=session_id,
            mode=mode,
            requester={"user": "erika", "name": "Erika Engineer", "organisation": "Acme Service"},
            reason="the printer queue is stuck",
            **fields,
        )
        return session_id, reply

    async def event(self, session_id: str, state: str) -> dict[str, Any]:
        """The next event for ``session_id``; it must be ``state``."""
        async with asyncio.timeout(T):
            while True:
                event = await self.relay.events.get()
                if event.get("session_id") == session_id:
                    break
        assert event["name"] == "desktop.state" and event["state"] == state, event
        return event

    async def open_desktop(
        self, session_id: str, mode: str, viewer: str = "erika", *, clipboard: bool = False
    ) -> Channel:
        """What the relay does when a viewer with a valid ticket joins."""
        return await self.link.tunnel.open_channel(
            "desktop",
            meta={"session_id": session_id, "mode": mode, "viewer": viewer, "clipboard": clipboard},
            priority=Priority.DESKTOP,
            window=2 * wire.MAX_MESSAGE,
            max_message=wire.MAX_MESSAGE,
        )

    def command(self, action: str, session_id: str) -> subprocess.CompletedProcess[str]:
        """``outlink-agent desktop ACTION SESSION_ID`` as the person at the device."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "desktop",
                action,
                session_id,
                "--config",
                str(self.config_file),
            ],
            capture_output=True,
            text=True,
            timeout=T,
        )


StartDevice = Callable[..., Awaitable[Device]]


@pytest.fixture
async def start_device(
    fleet: Fleet,  # noqa: F811 - the imported fixture
    xdisplay: str,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[StartDevice]:
    """``await start_device(**policy)``: an agent with desktop sessions under that policy
    (and ``clipboard_factory``, the real X11 clipboard by default),
    connected to a fresh stub relay. Torn down after the test (sessions end)."""
    stack: list[tuple[ConnectionManager, asyncio.Task[None], DesktopService, DesktopRelay]] = []

    async def start(clipboard_factory: ClipboardFactory = x11_clipboard, **policy: Any) -> Device:
        data_dir = tmp_path / "data"
        config_file = tmp_path / "agent.toml"
        config_file.write_text(f'data_dir = "{data_dir}"\n')
        relay = DesktopRelay(fleet)
        await relay.start()
        config = dataclasses.replace(
            AgentConfig(),
            relay_urls=(relay.url,),
            ca_file=str(fleet.ca_file),
            identity_dir=str(fleet.identity_dir(f"{tmp_path.name}-id")),
            data_dir=str(data_dir),
            proxy="none",
        )
        sources = CountingSources()
        service = DesktopService(
            DesktopPolicy(**{"display": xdisplay, **policy}),
            AnswerBox(data_dir / "desktop" / "answers"),
            settings=FAST,
            audit=AuditLog(data_dir / "audit.log"),
            source_factory=sources,
            clipboard_factory=clipboard_factory,
            environ=os.environ,
        )
        registry = Registry()
        service.register(registry)
        manager = ConnectionManager(config, registry, rng=random.Random(1))
        task = asyncio.create_task(manager.run())
        stack.append((manager, task, service, relay))
        link = await relay.wait_link(0, T)
        return Device(relay, link, service, sources, config_file, xdisplay)

    try:
        yield start
    finally:
        for manager, task, service, relay in stack:
            await service.aclose()
            manager.stop()
            await asyncio.wait_for(task, T)
            await relay.stop()


# -- the device's windows, found and clicked as a person would ---------------------------


def find_window(display: str, title: str, timeout: float = T) -> str:
    """The id of the window named ``title`` (a regex), once it is mapped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _search(display, title)
        if found:
            return found[0]
        time.sleep(0.05)  # another process: nothing to wait on but the X server
    raise AssertionError(f"no window {title!r} within {timeout} s")


def window_gone(display: str, title: str, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while _search(display, title):
        if time.monotonic() > deadline:
            raise AssertionError(f"window {title!r} still there after {timeout} s")
        time.sleep(0.05)


def is_shown(display: str, title: str) -> bool:
    return bool(_search(display, title))


def click(display: str, window: str, position: tuple[int, int]) -> None:
    """A real pointer click at ``position`` inside ``window`` (XTEST, like a mouse)."""
    x, y = position
    subprocess.run(
        ["xdotool", "mousemove", "--window", window, str(x), str(y), "click", "1"],
        env={**os.environ, "DISPLAY": display},
        check=True,
        timeout=T,
    )


def kill_client(display: str, window: str) -> None:
    """Cut the X connection of the program owning ``window`` (it dies of it)."""
    subprocess.run(
        ["xdotool", "windowkill", window],
        env={**os.environ, "DISPLAY": display},
        check=True,
        timeout=T,
    )


def press_key(display: str, key: str) -> None:
    """A real key press and release (XTEST), to the focused program."""
    subprocess.run(
        ["xdotool", "key", key], env={**os.environ, "DISPLAY": display}, check=True, timeout=T
    )


def _search(display: str, title: str) -> list[str]:
    result = subprocess.run(
        ["xdotool", "search", "--onlyvisible", "--name", title],
        env={**os.environ, "DISPLAY": display},
        capture_output=True,
        text=True,
        timeout=T,
    )
    return result.stdout.split()


@pytest.fixture
def program(app: App) -> Iterator[App]:  # noqa: F811 - the imported fixture
    """The Tk program, with the events of earlier tests forgotten."""
    app.drain()
    yield app
