"""Presence in the shared database: batched, conditional, cleaned up (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Engine, select

from pki.fleet import create_device, ensure_site
from relay_server.presence import PresenceWriter
from store.db import session_scope
from store.models import Presence, Relay
from tests.pki_fixtures import FleetPKI
from tests.relay.conftest import ControlPeer, device_id_of, running_relay


def make_devices(engine: Engine, n: int) -> list[str]:
    with session_scope(engine) as session:
        site = ensure_site(session, "acme", "lab")
        return [create_device(session, site).id for _ in range(n)]


def rows(engine: Engine) -> dict[str, Presence]:
    with session_scope(engine) as session:
        return {p.device_id: p for p in session.scalars(select(Presence))}


def writer(engine: Engine, relay_id: str) -> PresenceWriter:
    return PresenceWriter(
        engine,
        relay_id,
        f"wss://{relay_id}:8443/service",
        flush_interval=3600,  # tests flush explicitly
        last_seen_interval=3600,
        heartbeat_interval=3600,
    )


@pytest.fixture
async def relay_a(db_engine: Engine) -> AsyncIterator[PresenceWriter]:
    w = writer(db_engine, "relay-a")
    await w.start()
    yield w
    await w.stop()


async def test_batch_of_connects_is_one_write(db_engine: Engine, relay_a: PresenceWriter) -> None:
    devices = make_devices(db_engine, 1200)
    for d in devices:
        relay_a.connected(d, "10.0.0.1:5000")
    relay_a.agent_version(devices[0], "3.1")
    await relay_a.flush()
    assert relay_a.writes == 1
    found = rows(db_engine)
    assert len(found) == 1200
    assert all(p.online and p.relay_id == "relay-a" for p in found.values())
    assert found[devices[0]].agent_version == "3.1"
    assert found[devices[1]].peer_addr == "10.0.0.1:5000"
    relay_a.agent_version(devices[1], "3.2")  # after the connect was written
    relay_a.disconnected(devices[2])
    await relay_a.flush()
    found = rows(db_engine)
    assert found[devices[1]].agent_version == "3.2"
    assert not found[devices[2]].online and found[devices[2]].disconnected_at is not None


async def test_last_seen_and_heartbeat(db_engine: Engine, relay_a: PresenceWriter) -> None:
    [device] = make_devices(db_engine, 1)
    relay_a.connected(device, "10.0.0.1:5000")
    await relay_a.flush()
    before = rows(db_engine)[device].last_seen
    await relay_a.touch_last_seen()
    assert rows(db_engine)[device].last_seen > before  # type: ignore[operator]
    with session_scope(db_engine) as session:
        row = session.get_one(Relay, "relay-a")
        beat = row.heartbeat_at
        assert row.service_url == "wss://relay-a:8443/service"
    await relay_a.heartbeat()
    with session_scope(db_engine) as session:
        assert session.get_one(Relay, "relay-a").heartbeat_at > beat


async def test_disconnect_does_not_clobber_a_newer_relay(
    db_engine: Engine, relay_a: PresenceWriter
) -> None:
    [device] = make_devices(db_engine, 1)
    relay_a.connected(device, "10.0.0.1:5000")
    await relay_a.flush()
    relay_b = writer(db_engine, "relay-b")
    await relay_b.start()
    try:
        relay_b.connected(device, "10.0.0.2:6000")  # the device moved
        await relay_b.flush()
        relay_a.disconnected(device)  # relay A notices its old tunnel died
        await relay_a.flush()
        row = rows(db_engine)[device]
        assert (row.online, row.relay_id, row.peer_addr) == (True, "relay-b", "10.0.0.2:6000")
    finally:
        await relay_b.stop()
    assert not rows(db_engine)[device].online  # relay B stopped: its rows go offline


async def test_restart_clears_rows_a_crashed_run_left_online(db_engine: Engine) -> None:
    [device] = make_devices(db_engine, 1)
    crashed = writer(db_engine, "relay-a")
    await crashed.start()
    crashed.connected(device, "10.0.0.1:5000")
    await crashed.flush()
    # no stop(): the process "crashed"; a new run with the same relay id starts.
    restarted = writer(db_engine, "relay-a")
    await restarted.start()
    assert not rows(db_engine)[device].online
    await restarted.stop()
    await crashed.stop()


async def test_unknown_devices_are_skipped(db_engine: Engine, relay_a: PresenceWriter) -> None:
    [known] = make_devices(db_engine, 1)
    relay_a.connected("6f1c7a3e-1d2b-4c5d-8e9f-0a1b2c3d4e5f", "10.0.0.9:1")
    relay_a.connected(known, "10.0.0.1:5000")
    await relay_a.flush()
    assert list(rows(db_engine)) == [known]


async def test_live_relay_writes_presence(fleet_pki: FleetPKI, db_engine: Engine) -> None:
    async with running_relay(fleet_pki, db_engine) as fleet:
        cert = fleet.device()
        device = device_id_of(cert)
        control = await ControlPeer.open(await fleet.agent(cert))
        await control.request("hello", version="4.0")
        await fleet.relay.presence.flush()
        row = rows(db_engine)[device]
        assert (row.online, row.relay_id, row.agent_version) == (True, "relay-test", "4.0")
        assert row.peer_addr is not None and row.peer_addr.startswith("127.0.0.1:")
        with session_scope(db_engine) as session:
            assert session.get_one(Relay, "relay-test").service_url.endswith("/service")
    row = rows(db_engine)[device]
    assert not row.online  # graceful stop marks this relay's devices offline
