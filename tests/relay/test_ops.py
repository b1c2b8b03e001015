"""The ops listener: health, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from store.db import make_engine, upgrade
from tests.conftest import UNIT
from tests.pki_fixtures import FleetPKI
from tests.relay.conftest import ControlPeer, Fleet, device_id_of, running_relay
from tunnel.aio import IncomingChannel


async def get(fleet: Fleet, path: str) -> tuple[int, str, str]:
    """GET http://127.0.0.1:<ops port><path> -> (status, content type, body)."""

    def fetch() -> tuple[int, str, str]:
        url = f"http://127.0.0.1:{fleet.relay.ops_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5 * UNIT) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()

    return await asyncio.to_thread(fetch)


async def test_health_and_readiness(fleet: Fleet) -> None:
    assert (await get(fleet, "/healthz"))[::2] == (200, "ok\n")
    assert (await get(fleet, "/readyz"))[::2] == (200, "ready\n")
    assert (await get(fleet, "/nope"))[0] == 404


async def test_not_ready_when_the_database_is_gone(fleet_pki: FleetPKI, tmp_path: Path) -> None:
    directory = tmp_path / "db"
    directory.mkdir()
    url = f"sqlite:///{directory / 'relay.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        async with running_relay(fleet_pki, engine) as fleet:
            assert (await get(fleet, "/readyz"))[0] == 200
            shutil.rmtree(directory)
            engine.dispose()  # pooled connections would still reach the deleted file
            status, _, body = await get(fleet, "/readyz")
            assert (status, body) == (503, "database unreachable\n")
            assert (await get(fleet, "/healthz"))[0] == 200
    finally:
        engine.dispose()


async def test_metrics_exposition(fleet: Fleet) -> None:
    async def echo(request: IncomingChannel) -> None:
        channel = request.accept()
        async for data in channel:
            await channel.send(data)

    cert = fleet.device()
    control = await ControlPeer.open(await fleet.agent(cert, on_open=echo))
    await control.request("hello", version="1")
    service = await fleet.service()
    bridge = await service.open_bridge(device_id_of(cert), "desktop")
    await bridge.send(b"frame" * 100)
    await bridge.recv()
    await service.rpc("presence")

    status, content_type, body = await get(fleet, "/metrics")
    assert (status, content_type) == (200, CONTENT_TYPE_LATEST)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("outlink_relay_info", relay_id="relay-test") == 1
    assert value("outlink_relay_agents_connected") == 1
    assert value("outlink_relay_services_connected") == 1
    assert value("outlink_relay_handshakes_total", endpoint="agent", outcome="ok") == 1
    assert value("outlink_relay_handshakes_total", endpoint="service", outcome="ok") == 1
    assert value("outlink_relay_bridges_total", kind="desktop", outcome="ok") == 1
    assert value("outlink_relay_bridges_active") == 1
    assert value("outlink_relay_rpc_requests_total", op="presence", outcome="ok") == 1
    assert value("outlink_relay_control_requests_total", op="hello", outcome="ok") == 1
    assert (
        value("outlink_relay_bytes_total", endpoint="agent", kind="desktop", direction="in") >= 500
    )
    assert value("outlink_relay_frames_total", endpoint="service", kind="rpc", direction="in") >= 1
    for name in (
        "outlink_relay_send_queue_bytes",
        "outlink_relay_send_queue_max_bytes",
        "outlink_relay_write_buffer_bytes",
        "outlink_relay_channels_open",
    ):
        assert (name, (("endpoint", "agent"),)) in samples
    for name in (
        "outlink_relay_replaced_total",
        "outlink_relay_revocations_total",
        "outlink_relay_tcp_accepted_total",
        "outlink_relay_tls_established_total",
        "outlink_relay_presence_pending",
        "outlink_relay_connections_open",
    ):
        assert (name, ()) in samples, name
    assert value("outlink_relay_revoked_entries", type="device") == 0
