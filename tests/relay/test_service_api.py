"""The portal <-> relay contract on a live relay: rpc ops and bridges."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from websockets.exceptions import ConnectionClosed

from pki.revocation import revoke_device
from protocol.aio.client import RpcError
from protocol.envelope import encode_error
from store.db import session_scope
from tests.conftest import UNIT
from tests.pki_fixtures import CertFiles
from tests.relay.conftest import ControlPeer, Fleet, device_id_of, next_goaway
from tunnel import ErrorCode
from tunnel.aio import ChannelRefusedError, ChannelResetError, IncomingChannel


async def test_presence_lists_connected_devices(fleet: Fleet) -> None:
    certs = [fleet.device() for _ in range(3)]
    for cert in certs:
        control = await ControlPeer.open(await fleet.agent(cert))
        await control.request("hello", version="2.0")
    service = await fleet.service()
    everything = await service.rpc("presence")
    assert everything["relay_id"] == "relay-test" and everything["total"] == 3
    ids = sorted(device_id_of(c) for c in certs)
    assert [d["device_id"] for d in everything["devices"]] == ids
    assert {d["agent_version"] for d in everything["devices"]} == {"2.0"}
    assert {d["customer"] for d in everything["devices"]} == {"acme"}
    page = await service.rpc("presence", offset=1, limit=1)
    assert [d["device_id"] for d in page["devices"]] == ids[1:2]
    one = await service.rpc("presence", device=ids[0])
    assert [d["device_id"] for d in one["devices"]] == ids[:1]
    with pytest.raises(RpcError) as bad:
        await service.rpc("presence", device="not-a-uuid")
    assert bad.value.code == "bad_request"
    with pytest.raises(RpcError) as unknown:
        await service.rpc("reboot_the_world")
    assert unknown.value.code == "unknown_op"


async def test_instruct_reaches_the_agent_and_returns_its_answer(fleet: Fleet) -> None:
    cert = fleet.device()
    control = await ControlPeer.open(await fleet.agent(cert))
    service = await fleet.service()
    answer = await service.rpc(
        "instruct", device=device_id_of(cert), instruction={"action": "ping", "n": 1}
    )
    assert answer == {"result": {"echo": {"action": "ping", "n": 1}}}
    assert control.instructions == [{"action": "ping", "n": 1}]


async def test_instruct_errors(fleet: Fleet) -> None:
    refusing = fleet.device()
    await ControlPeer.open(
        await fleet.agent(refusing),
        answer=lambda rid, ins: encode_error(rid, "unknown_action", "no such action"),
    )
    silent = fleet.device()
    await ControlPeer.open(await fleet.agent(silent), answer=lambda rid, ins: None)
    no_control = fleet.device()
    await fleet.agent(no_control)
    await fleet.wait_registered(device_id_of(no_control))
    service = await fleet.service()

    async def instruct(cert: CertFiles, **kw: object) -> RpcError:
        with pytest.raises(RpcError) as info:
            await service.rpc(
                "instruct",
                device=device_id_of(cert),
                instruction={"action": "x"},
                **kw,
            )
        return info.value

    refused = await instruct(refusing)
    assert (refused.code, refused.body["agent_error"]) == ("agent_error", "unknown_action")
    assert (await instruct(silent, timeout=1)).code == "timeout"
    assert (await instruct(no_control)).code == "offline"
    assert (await instruct(fleet.device())).code == "offline"  # never connected
    with pytest.raises(RpcError) as bad:
        await service.rpc("instruct", device=device_id_of(refusing), instruction={"no": "action"})
    assert bad.value.code == "bad_request"


async def test_disconnect_sends_goaway_with_retry_after(fleet: Fleet) -> None:
    cert = fleet.device()
    raw = await fleet.ws("/agent", cert)
    await fleet.wait_registered(device_id_of(cert))
    service = await fleet.service()
    answer = await service.rpc("disconnect", device=device_id_of(cert), retry_after_ms=1234)
    assert answer == {"disconnected": True}
    goaway = await next_goaway(raw)
    assert (goaway.code, goaway.retry_after_ms) == (ErrorCode.GOING_AWAY, 1234)
    # The raw agent does not leave by itself: the relay closes after the grace period,
    # with a WebSocket close and no second GOAWAY (which would override the retry hint).
    with pytest.raises(ConnectionClosed) as closed:
        await next_goaway(raw)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    await fleet.wait_registered(device_id_of(cert), present=False)
    assert await service.rpc("disconnect", device=device_id_of(cert)) == {"disconnected": False}


async def test_revoke_push_closes_the_tunnel_at_once(fleet: Fleet) -> None:
    cert = fleet.device()
    tunnel = await fleet.agent(cert)
    await fleet.wait_registered(device_id_of(cert))
    with session_scope(fleet.engine) as session:
        revoke_device(session, device_id_of(cert), reason="stolen")
    service = await fleet.service()
    answer = await service.rpc("revoke", device=device_id_of(cert))
    assert answer == {"revoked": True, "closed": True}
    async with asyncio.timeout(5 * UNIT):
        await tunnel.closed.wait()
    assert tunnel.error_code is ErrorCode.REVOKED
    assert fleet.relay.stats.revoked_closed == 1
    # ...and it cannot come back.
    with pytest.raises(Exception, match="403"):
        await fleet.agent(cert)


async def echo_agent(request: IncomingChannel) -> None:
    """Agent side of a bridge: accept and echo every message until EOF."""
    channel = request.accept({"agent": "hello", "got": request.meta})
    async for data in channel:
        await channel.send(data)
    await channel.close()


async def test_bridge_end_to_end_with_eof_both_ways(fleet: Fleet) -> None:
    cert = fleet.device()
    await fleet.agent(cert, on_open=echo_agent)
    await fleet.wait_registered(device_id_of(cert))
    service = await fleet.service()
    channel = await service.open_bridge(device_id_of(cert), "diagnostics", {"shell": "sh"})
    assert channel.accept_meta == {
        "agent": "hello",
        "got": {"shell": "sh", "requested_by": "portal"},
    }
    for size in (1, 1000, 200_000):
        await channel.send(b"x" * size)
        assert await channel.recv() == b"x" * size
    await channel.close()
    with pytest.raises(EOFError):
        await channel.recv()
    assert fleet.relay.stats.bridges[("diagnostics", "ok")] == 1


async def test_bridge_to_offline_device_is_unavailable(fleet: Fleet) -> None:
    service = await fleet.service()
    with pytest.raises(ChannelRefusedError) as info:
        await service.open_bridge(device_id_of(fleet.device()), "desktop")
    assert info.value.code is ErrorCode.UNAVAILABLE


async def test_bridge_refused_by_agent_passes_its_code(fleet: Fleet) -> None:
    async def refuse(request: IncomingChannel) -> None:
        request.refuse(ErrorCode.FORBIDDEN, "customer said no")

    cert = fleet.device()
    await fleet.agent(cert, on_open=refuse)
    await fleet.wait_registered(device_id_of(cert))
    service = await fleet.service()
    with pytest.raises(ChannelRefusedError) as info:
        await service.open_bridge(device_id_of(cert), "desktop")
    assert (info.value.code, info.value.reason) == (ErrorCode.FORBIDDEN, "customer said no")
    with pytest.raises(ChannelRefusedError) as bad:
        await service.open_bridge(device_id_of(cert), "control")
    assert bad.value.code is ErrorCode.BAD_REQUEST


async def test_bridge_reset_and_disconnect_propagate(fleet: Fleet) -> None:
    agent_channels: asyncio.Queue[object] = asyncio.Queue()

    async def keep(request: IncomingChannel) -> None:
        agent_channels.put_nowait(request.accept())
        await asyncio.Event().wait()  # hold the handler; the channel lives on

    cert = fleet.device()
    tunnel = await fleet.agent(cert, on_open=keep)
    await fleet.wait_registered(device_id_of(cert))
    service = await fleet.service()
    first = await service.open_bridge(device_id_of(cert), "files")
    agent_first = await agent_channels.get()
    first.reset(ErrorCode.CANCELLED, "user closed the tab")
    with pytest.raises(ChannelResetError) as reset:
        await agent_first.recv()  # type: ignore[attr-defined]
    assert reset.value.code is ErrorCode.CANCELLED and reset.value.remote
    second = await service.open_bridge(device_id_of(cert), "files")
    await agent_channels.get()
    await tunnel.close()
    with pytest.raises(ChannelResetError) as gone:
        await second.recv()
    assert gone.value.code is ErrorCode.UNAVAILABLE


async def test_slow_reader_bounds_relay_memory_and_other_bridges_flow(fleet: Fleet) -> None:
    """The agent floods a bridge nobody reads: the agent's sends block (credit is not
    returned), the relay holds about one window + one backlog, and a second bridge on
    the same tunnels keeps flowing."""
    chunk = b"z" * 60_000
    sent = 0
    flooding = asyncio.Event()

    async def agent_side(request: IncomingChannel) -> None:
        nonlocal sent
        channel = request.accept()
        if request.meta.get("mode") == "flood":
            flooding.set()
            while True:
                await channel.send(chunk)
                sent += len(chunk)
        else:
            async for data in channel:
                await channel.send(data)

    cert = fleet.device()
    await fleet.agent(cert, on_open=agent_side)
    await fleet.wait_registered(device_id_of(cert))
    service = await fleet.service()
    await service.open_bridge(device_id_of(cert), "files", {"mode": "flood"})
    await flooding.wait()
    echo = await service.open_bridge(device_id_of(cert), "files", {"mode": "echo"})
    # The flood stalls on flow control: `sent` stops growing while nobody reads.
    settings = fleet.relay.tunnel_settings
    bound = 3 * settings.window + 3 * settings.send_high_water + 4 * len(chunk)
    for i in range(20):
        await echo.send(b"ping %d" % i)
        assert await echo.recv() == b"ping %d" % i
    link = fleet.relay.registry.agents[device_id_of(cert)]
    assert link.tunnel is not None
    relay_held = link.tunnel.queued_bytes + sum(
        s.tunnel.queued_bytes for s in fleet.relay.registry.services if s.tunnel
    )
    assert sent <= bound, (sent, bound)
    assert relay_held <= settings.window + 2 * settings.send_high_water + len(chunk)
    stalled_at = sent
    for i in range(20):
        await echo.send(b"pong %d" % i)
        assert await echo.recv() == b"pong %d" % i
    assert sent == stalled_at  # still blocked: the unread bridge gives no credit
    with contextlib.suppress(Exception):
        await echo.close()
