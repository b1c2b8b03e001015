"""Bridges forward DATA chunks as they arrive (`relay_server.splice`, `tunnel.aio.Forward`):
messages arrive whole and identical, the relay holds at most one window per direction
whatever the reader does, and the receiver's max_message still holds through the relay."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from protocol.aio.client import ServiceClient
from tests.relay.conftest import Fleet, device_id_of, wait_for
from tunnel import ErrorCode, Priority
from tunnel.aio import Channel, ChannelResetError, IncomingChannel
from tunnel.limits import MAX_CREDIT_BATCH


async def echo_agent(request: IncomingChannel) -> None:
    limit = request.meta.get("max_message")
    channel = request.accept(max_message=limit)
    try:
        async for data in channel:
            await channel.send(data)
        await channel.close()
    except ChannelResetError:
        pass


async def open_files_bridge(
    service: ServiceClient, device: str, meta: dict[str, Any], **limits: Any
) -> Channel:
    """`open_bridge` with our own receive limits on the service side."""
    return await service.tunnel.open_channel(
        "bridge",
        {"device": device, "channel_kind": "files", "meta": meta},
        priority=Priority.BULK,
        **limits,
    )


async def test_forwarded_messages_arrive_identical_both_ways(fleet: Fleet) -> None:
    cert = fleet.device()
    await fleet.agent(cert, on_open=echo_agent)
    await fleet.wait_registered(device_id_of(cert))
    service = await fleet.service()
    channel = await service.open_bridge(device_id_of(cert), "files")
    rng = random.Random(2)
    sizes = [1, 65535, 65536, 65537, 200_000, 262144] + [rng.randint(1, 262144) for _ in range(6)]
    messages = [os.urandom(size) for size in sizes]

    async def send_all() -> None:
        for message in messages:
            await channel.send(message)

    sender = asyncio.create_task(send_all())
    for message in messages:  # several in flight at once, echoed while still arriving
        assert await channel.recv() == message
    await sender
    await channel.close()
    with pytest.raises(EOFError):
        await channel.recv()


async def test_slow_reader_behind_the_relay_does_not_grow_relay_memory(fleet: Fleet) -> None:
    """The agent floods a bridge nobody reads: the relay holds at most its receive
    window for it (forwarded chunks waiting for the reader's credit), and that stays
    flat while the agent keeps trying; the agent's send() blocks."""
    message = b"z" * 262144
    sent = 0
    agent_channel: list[Channel] = []

    async def flood(request: IncomingChannel) -> None:
        nonlocal sent
        channel = request.accept()
        agent_channel.append(channel)
        while True:
            await channel.send(message)
            sent += len(message)

    cert = fleet.device()
    await fleet.agent(cert, on_open=flood)
    await fleet.wait_registered(device_id_of(cert))
    service = await fleet.service()
    reader = await service.open_bridge(device_id_of(cert), "files")
    high_water = fleet.relay.tunnel_settings.send_high_water
    link = fleet.relay.registry.agents[device_id_of(cert)]
    assert link.tunnel is not None
    services = [s.tunnel for s in fleet.relay.registry.services if s.tunnel is not None]
    window = fleet.relay.tunnel_settings.bulk_window

    def relay_held() -> int:
        assert link.tunnel is not None
        return link.tunnel.queued_bytes + sum(t.queued_bytes for t in services)

    # Stalled: the agent's send() blocks (it went past the high-water mark and has not
    # come back down to half of it), the relay holds its window (less the credit it owes
    # the agent but batches).
    await wait_for(
        lambda: (
            agent_channel[0].queued_bytes > high_water // 2
            and relay_held() >= window - MAX_CREDIT_BATCH
        )
    )
    for _ in range(3):  # chunks still on their way to the relay land meanwhile
        await service.rpc("presence")
    held = relay_held()
    assert held <= window
    stalled_at = sent
    # Round trips on the service's rpc channel give the flood every chance to grow.
    for _ in range(10):
        await service.rpc("presence")
    assert relay_held() == held
    assert sent == stalled_at
    # relay window + reader window left the agent, the rest waits in its send()
    assert sent <= 2 * window + high_water + len(message)

    async def read_all() -> None:
        while True:
            assert await reader.recv() == message

    # Reading lets data flow again, from the agent on: its send() returns once its
    # backlog is down to half the high-water mark.
    reading = asyncio.create_task(read_all())
    await wait_for(lambda: sent > stalled_at)
    assert relay_held() <= window
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    reader.reset()


@pytest.mark.parametrize("direction", ["to_service", "to_agent"])
async def test_oversize_forwarded_message_resets_both_sides(fleet: Fleet, direction: str) -> None:
    """The relay accepts up to its own max_message but the receiver behind it takes less:
    the relay counts the forwarded message and resets both sides MESSAGE_TOO_LARGE."""
    limit = 100_000
    agent_channels: asyncio.Queue[Channel] = asyncio.Queue()

    async def agent_side(request: IncomingChannel) -> None:
        agent_channels.put_nowait(request.accept(max_message=request.meta.get("max_message")))

    cert = fleet.device()
    await fleet.agent(cert, on_open=agent_side)
    await fleet.wait_registered(device_id_of(cert))
    service = await fleet.service()
    if direction == "to_service":
        service_channel = await open_files_bridge(
            service, device_id_of(cert), {}, max_message=limit
        )
        agent_channel = await agent_channels.get()
        sender, receiver = agent_channel, service_channel
    else:
        service_channel = await open_files_bridge(
            service, device_id_of(cert), {"max_message": limit}
        )
        agent_channel = await agent_channels.get()
        sender, receiver = service_channel, agent_channel
    assert limit < 2 * limit <= fleet.relay.tunnel_settings.bulk_window
    await sender.send(b"y" * (2 * limit))
    for channel in (receiver, sender):
        with pytest.raises(ChannelResetError) as info:
            await channel.recv()
        assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
