"""The REAL agent process (``python -m agent run``) with desktop sessions: it announces
them, prompts on the display, takes the local command's answer, keeps the local audit
log, opens no listening socket, and takes its windows with it on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from agent.audit import read_entries, verify
from tests.agent.conftest import Fleet
from tests.agent.test_process import listening_sockets
from tests.conftest import UNIT

from .conftest import DesktopRelay, find_window, window_gone

T = 20 * UNIT  # a cold Python start plus imports
PROMPT = "remote access request"


@pytest.fixture
async def relay(fleet: Fleet) -> AsyncIterator[DesktopRelay]:
    stub = DesktopRelay(fleet)
    await stub.start()
    yield stub
    await stub.stop()


async def run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), T)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_agent_process_serves_desktop_sessions(
    fleet: Fleet, relay: DesktopRelay, xdisplay: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
relay_urls = ["{relay.url}"]
ca_file = "{fleet.ca_file}"
identity_dir = "{fleet.identity_dir("desktop-process-" + tmp_path.name)}"
data_dir = "{data}"
proxy = "none"
[desktop]
display = "{xdisplay}"
"""
    )
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "--config", str(config)
    )
    try:
        link = await relay.wait_link(0, T)
        assert {"action:desktop.request", "action:desktop.answer", "action:desktop.end"} <= set(
            link.hello["capabilities"]
        )
        assert "channel:desktop" in link.hello["capabilities"]

        session_id = str(uuid.uuid4())
        reply = await relay.instruct(
            link,
            {
                "action": "desktop.request",
                "session_id": session_id,
                "mode": "control",
                "requester": {"user": "erika", "name": "Erika Engineer", "organisation": "Acme"},
                "reason": "",
            },
            T,
        )
        assert reply.ok and reply.body["result"]["state"] == "prompting"
        await asyncio.to_thread(find_window, xdisplay, PROMPT, T)
        family = psutil.Process(agent.pid)
        for pid in [agent.pid, *(c.pid for c in family.children(recursive=True))]:
            assert listening_sockets(pid) == [], pid  # R19, windows included

        code, out = await run("desktop", "deny", session_id, "--config", str(config))
        assert code == 0 and "denied" in out
        async with asyncio.timeout(T):
            announced = await relay.events.get()  # on connecting: the consent setting
            event = await relay.events.get()
        assert announced["name"] == "desktop.policy" and announced["consent_required"] is True
        assert (event["session_id"], event["state"], event["by"]) == (
            session_id,
            "denied",
            "device",
        )
        await asyncio.to_thread(window_gone, xdisplay, PROMPT, T)

        # A second request, still prompting when the agent is stopped: the prompt goes too.
        second = str(uuid.uuid4())
        reply = await relay.instruct(
            link,
            {
                "action": "desktop.request",
                "session_id": second,
                "mode": "view",
                "requester": {"user": "erika"},
            },
            T,
        )
        assert reply.ok
        await asyncio.to_thread(find_window, xdisplay, PROMPT, T)
        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), T) == 0
        await asyncio.to_thread(window_gone, xdisplay, PROMPT, T)
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()

    audit = data / "audit.log"
    assert verify(audit).ok
    lines = [entry for _, entry, _ in read_entries(audit) if entry and entry["kind"] == "desktop"]
    outcomes = [(e["outcome"], e["detail"]["session_id"]) for e in lines]
    assert outcomes == [
        ("requested", session_id),
        ("denied", session_id),
        ("requested", second),
        ("ended", second),
    ]
    assert lines[-1]["detail"]["end_reason"] == "agent-stopping"
    assert json.dumps(lines[0]["detail"]).count("Erika Engineer") == 1
