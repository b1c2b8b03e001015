"""Bad input and faults: revocation without push, limits, oversized and rogue frames."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Engine
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pki.revocation import revoke_device
from relay_server.config import LimitsConfig, RevocationConfig
from store.db import session_scope
from tests.conftest import UNIT
from tests.pki_fixtures import FleetPKI
from tests.relay.conftest import ControlPeer, Fleet, device_id_of, running_relay
from tunnel import MAX_FRAME_SIZE, ErrorCode
from tunnel.frames import FrameType, GoAwayFrame, OpenFrame, RefuseFrame, decode_frame


async def test_revoked_device_closed_within_refresh_interval_without_push(
    fleet_pki: FleetPKI, relay_db: Engine
) -> None:
    refresh = 0.3 * UNIT
    async with running_relay(
        fleet_pki, relay_db, revocation=RevocationConfig(refresh_interval=refresh)
    ) as fleet:
        cert = fleet.device()
        tunnel = await fleet.agent(cert)
        await fleet.wait_registered(device_id_of(cert))
        loop = asyncio.get_running_loop()
        with session_scope(fleet.engine) as session:
            revoke_device(session, device_id_of(cert), reason="lost")
        revoked_at = loop.time()
        async with asyncio.timeout(5 * UNIT):
            await tunnel.closed.wait()
        assert loop.time() - revoked_at <= 2 * refresh + UNIT
        assert tunnel.error_code is ErrorCode.REVOKED


async def test_new_connections_per_source_are_rate_limited(
    fleet_pki: FleetPKI, relay_db: Engine
) -> None:
    limits = LimitsConfig(connect_rate_per_source=0.5, connect_burst_per_source=2)
    async with running_relay(fleet_pki, relay_db, limits=limits) as fleet:
        cert = fleet.device()
        await fleet.agent(cert)
        await fleet.agent(cert)
        with pytest.raises(InvalidStatus) as info:
            await fleet.ws("/agent", cert)
        response = info.value.response
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert b"too many new connections" in response.body
        assert fleet.relay.stats.handshakes[("agent", "rate_limited")] == 1


async def test_concurrent_connections_per_source_are_limited(
    fleet_pki: FleetPKI, relay_db: Engine
) -> None:
    limits = LimitsConfig(connect_rate_per_source=0, max_connections_per_source=2)
    async with running_relay(fleet_pki, relay_db, limits=limits) as fleet:
        first = await fleet.agent(fleet.device())
        await fleet.agent(fleet.device())
        with pytest.raises(InvalidStatus) as info:
            await fleet.ws("/agent", fleet.device())
        assert info.value.response.status_code == 429
        await first.close()
        await fleet.agent(fleet.device())  # a slot is free again


async def test_oversized_message_closes_with_1009_others_unaffected(fleet: Fleet) -> None:
    bystander = fleet.device()
    control = await ControlPeer.open(await fleet.agent(bystander))
    raw = await fleet.ws("/agent", fleet.device())
    await raw.send(b"\x04\x00\x00\x00\x00\x01" + b"x" * MAX_FRAME_SIZE)
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(5 * UNIT):
            while True:
                await raw.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert (await control.request("hello", version="1")).ok


@pytest.mark.parametrize(
    ("frame", "name"),
    [
        (b"\x63\x00\x00\x00\x00\x00", "unknown type"),
        (b"\x04", "truncated header"),
        (b"\x04\x00\x00\x00\x00\x07hello", "data for a never-opened channel"),
        (OpenFrame(2, 65536, 65536, {"kind": "control"}).encode(), "client opened an even id"),
        ("text message", "text frame"),
    ],
)
async def test_rogue_frames_fail_only_that_tunnel(
    fleet: Fleet, frame: bytes | str, name: str
) -> None:
    bystander = fleet.device()
    control = await ControlPeer.open(await fleet.agent(bystander))
    rogue = fleet.device()
    raw = await fleet.ws("/agent", rogue)
    await fleet.wait_registered(device_id_of(rogue))
    await raw.send(frame)
    goaway = None
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(5 * UNIT):
            while True:
                data = await raw.recv(decode=False)
                if data[0] == FrameType.GOAWAY:
                    goaway = decode_frame(data)
    assert isinstance(goaway, GoAwayFrame), name
    assert goaway.code is ErrorCode.PROTOCOL_ERROR, name
    assert info.value.rcvd is not None and info.value.rcvd.code == 1002
    await fleet.wait_registered(device_id_of(rogue), present=False)
    assert (await control.request("hello", version="1")).ok
    assert fleet.relay.stats.tunnels_closed[("agent", "PROTOCOL_ERROR")] == 1


async def test_channel_flood_is_refused_not_queued(fleet: Fleet) -> None:
    """More OPENs than max_channels: refused with TOO_MANY_CHANNELS, tunnel survives."""
    raw = await fleet.ws("/agent", fleet.device())
    limit = fleet.relay.tunnel_settings.max_channels
    for i in range(limit + 5):
        await raw.send(OpenFrame(2 * i + 1, 65536, 65536, {"kind": "control"}).encode())
    refusals: list[ErrorCode] = []
    async with asyncio.timeout(5 * UNIT):
        while len(refusals) < limit + 4:
            frame = decode_frame(await raw.recv(decode=False))
            if isinstance(frame, RefuseFrame):
                refusals.append(frame.code)
    assert ErrorCode.TOO_MANY_CHANNELS in refusals
    assert ErrorCode.BAD_REQUEST in refusals  # the second..nth control channel
