"""The control channel under bad input from the relay, over a real tunnel."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.connection import ConnectionManager
from agent.control import MAX_CONCURRENT_INSTRUCTIONS, Registry
from tests.agent.conftest import Fleet
from tests.agent.relay_stub import Link, StubRelay
from tests.conftest import UNIT

T = 10 * UNIT


@pytest.fixture
async def link(
    fleet: Fleet, tmp_path: Path
) -> AsyncIterator[tuple[Link, StubRelay, asyncio.Event]]:
    """An agent with actions `echo`, `slow` (waits for `release`) and `huge`, connected."""
    release = asyncio.Event()
    registry = Registry()

    @registry.action("echo")
    async def echo(instruction: dict[str, Any]) -> dict[str, Any]:
        return {"echo": instruction.get("value")}

    @registry.action("slow")
    async def slow(instruction: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {}

    @registry.action("huge")
    async def huge(instruction: dict[str, Any]) -> dict[str, Any]:
        return {"blob": "x" * 100_000}

    relay = await StubRelay(fleet).start()
    config = dataclasses.replace(
        AgentConfig(),
        relay_urls=(relay.url,),
        ca_file=str(fleet.ca_file),
        identity_dir=str(fleet.identity_dir(tmp_path.name)),
        data_dir=str(tmp_path / "data"),
        proxy="none",
    )
    manager = ConnectionManager(config, registry, rng=random.Random(1))
    task = asyncio.create_task(manager.run())
    try:
        yield await relay.wait_link(0, T), relay, release
    finally:
        release.set()
        manager.stop()
        await asyncio.wait_for(task, T)
        await relay.stop()


async def raw(link: Link, message: bytes | dict[str, Any]) -> None:
    assert link.control is not None
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    await link.control.send(data)


async def still_works(relay: StubRelay, link: Link) -> None:
    reply = await relay.instruct(link, {"action": "echo", "value": 42}, T)
    assert reply.ok and reply.body["result"] == {"echo": 42}


async def test_requests_the_agent_does_not_serve_get_unknown_op(
    link: tuple[Link, StubRelay, asyncio.Event],
) -> None:
    lk, relay, _ = link
    for request in (
        {"id": 901, "op": "hello", "version": "9", "capabilities": []},
        {"id": 902, "op": "renew", "csr": "x"},
        {"id": 903, "op": "reboot"},
    ):
        await raw(lk, request)
        reply = await asyncio.wait_for(lk.unmatched.get(), T)
        assert (reply.id, reply.ok, reply.error) == (request["id"], False, "unknown_op")
    await still_works(relay, lk)


async def test_malformed_instructions_are_refused_with_bad_request(
    link: tuple[Link, StubRelay, asyncio.Event],
) -> None:
    lk, relay, _ = link
    for n, instruction in enumerate(["rm -rf /", {"no_action": 1}, {"action": 5}, None]):
        await raw(lk, {"id": 910 + n, "op": "instruct", "instruction": instruction})
        reply = await asyncio.wait_for(lk.unmatched.get(), T)
        assert (reply.id, reply.ok, reply.error) == (910 + n, False, "bad_request")
    await still_works(relay, lk)


async def test_garbage_and_error_replies_are_not_answered(
    link: tuple[Link, StubRelay, asyncio.Event],
) -> None:
    """Nothing without a usable id is answered: no error ping-pong with the relay."""
    lk, relay, _ = link
    for garbage in (
        b"\xff\xfe not json",
        b"[1, 2, 3]",
        b'{"id": true, "op": "instruct"}',
        b'{"id": null, "ok": false, "error": "bad_request", "message": "x"}',
        b"{" + b'"a": [' * 5000 + b"]" * 5000 + b"}",  # deep nesting
        b'{"id": 1, "pad": "' + b"x" * 70_000 + b'"}',  # over the 64 KiB message limit
    ):
        await raw(lk, garbage)
    await still_works(relay, lk)
    assert lk.unmatched.empty()
    assert lk.unparseable == []  # not even an "id": null error went back


async def test_instruction_flood_is_answered_busy_not_queued(
    link: tuple[Link, StubRelay, asyncio.Event],
) -> None:
    lk, _, release = link
    total = MAX_CONCURRENT_INSTRUCTIONS + 5
    for n in range(total):
        await raw(lk, {"id": 1000 + n, "op": "instruct", "instruction": {"action": "slow"}})
    busy = [await asyncio.wait_for(lk.unmatched.get(), T) for _ in range(5)]
    assert all(r.error == "busy" for r in busy)
    release.set()
    done = [await asyncio.wait_for(lk.unmatched.get(), T) for _ in range(total - 5)]
    assert all(r.ok for r in done)


async def test_oversized_result_becomes_an_error(
    link: tuple[Link, StubRelay, asyncio.Event],
) -> None:
    lk, relay, _ = link
    reply = await relay.instruct(lk, {"action": "huge"}, T)
    assert not reply.ok and reply.error == "too_large"
    await still_works(relay, lk)


def test_registry_rules() -> None:
    registry = Registry()

    async def handler(arg: Any) -> None:
        return None

    registry.add_action("a", handler)
    registry.add_channel("desktop", handler)
    with pytest.raises(ValueError, match="already"):
        registry.add_action("a", handler)
    with pytest.raises(ValueError, match="reserved"):
        registry.add_channel("control", handler)
    assert registry.capabilities == ["action:a", "channel:desktop"]
