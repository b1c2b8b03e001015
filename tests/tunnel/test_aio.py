"""The asyncio adapter over a real websockets server and client on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import UNIT
from tests.tunnel.conftest import tunnel_pair
from tunnel.aio import IncomingChannel


async def echo(request: IncomingChannel) -> None:
    channel = request.accept({"echo": True})
    async with channel:
        async for message in channel:
            await channel.send(message)


async def test_echo() -> None:
    async with tunnel_pair(server_on_open=echo) as pair:
        channel = await asyncio.wait_for(pair.client.open_channel("echo", {"n": 1}), 5 * UNIT)
        assert channel.accept_meta == {"echo": True}
        for size in (1, 1000, 16 * 1024, 300_000):
            await channel.send(bytes([size % 251]) * size)
            assert await asyncio.wait_for(channel.recv(), 5 * UNIT) == bytes([size % 251]) * size
        await channel.close()
        with pytest.raises(EOFError):
            await asyncio.wait_for(channel.recv(), 5 * UNIT)
        await asyncio.wait_for(channel.wait_closed(), 5 * UNIT)
