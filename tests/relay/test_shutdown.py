"""Graceful shutdown, in-process and as a real process receiving SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from websockets.asyncio.client import connect

from relay_server.config import ShutdownConfig
from store.db import make_engine, session_scope
from store.models import Presence
from tests.conftest import UNIT
from tests.pki_fixtures import FleetPKI
from tests.relay.conftest import (
    Fleet,
    device_id_of,
    next_goaway,
    register_device,
    running_relay,
)
from tunnel import SUBPROTOCOLS, ErrorCode
from tunnel.aio import websocket_options


async def test_shutdown_sends_goaway_with_spread_retry_after(
    fleet_pki: FleetPKI, relay_db: Engine
) -> None:
    shutdown = ShutdownConfig(retry_after_min_ms=200, retry_after_max_ms=5000, grace=0.5 * UNIT)
    async with running_relay(fleet_pki, relay_db, shutdown=shutdown) as fleet:
        certs = [fleet.device() for _ in range(8)]
        raws = [await fleet.ws("/agent", cert) for cert in certs]
        polite = await fleet.agent(fleet.device())  # a tunnel agent, for its close code
        for cert in certs:
            await fleet.wait_registered(device_id_of(cert))
        await fleet.relay.presence.flush()
        stopping = asyncio.create_task(fleet.relay.stop())
        goaways = [await next_goaway(raw) for raw in raws]
        async with asyncio.timeout(5 * UNIT):
            await stopping
    assert {g.code for g in goaways} == {ErrorCode.GOING_AWAY}
    delays = [g.retry_after_ms for g in goaways]
    assert all(200 <= d <= 5000 for d in delays)
    assert len(set(delays)) > 1  # randomised, not one value for everybody
    # The tunnel agent did not leave by itself; the relay closed it after the grace
    # period without overriding the retry hint it sent first.
    assert polite.error_code is ErrorCode.GOING_AWAY
    assert polite.goaway is not None and 200 <= polite.goaway.retry_after_ms <= 5000
    with session_scope(relay_db) as session:
        assert not any(p.online for p in session.scalars(select(Presence)))


async def test_nothing_listens_after_shutdown(fleet: Fleet) -> None:
    port = fleet.relay.port
    await fleet.relay.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def read_json_line(
    stream: asyncio.StreamReader, lines: list[dict[str, Any]], want: str
) -> dict[str, Any]:
    """Read JSON log lines until one whose message is `want`; keep all of them."""
    async with asyncio.timeout(20 * UNIT):
        while True:
            raw = await stream.readline()
            assert raw, f"relay exited before logging {want!r}"
            line: dict[str, Any] = json.loads(raw)
            lines.append(line)
            if line.get("message") == want:
                return line


async def test_relay_process_sigterm(fleet_pki: FleetPKI, tmp_path: Path) -> None:
    """The real CLI: migrates, logs JSON, serves, and on SIGTERM says GOAWAY and exits 0."""
    db_url = f"sqlite:///{tmp_path / 'outlink.db'}"
    config = tmp_path / "relay.toml"
    config.write_text(
        f'relay_id = "relay-proc"\ndb_url = "{db_url}"\n'
        "[listen]\nport = 0\n[ops]\nport = 0\n"
        f'[tls]\ncert = "{fleet_pki.server.cert_file}"\nkey = "{fleet_pki.server.key_file}"\n'
        f'ca = "{fleet_pki.ca_file}"\nca_dir = "{fleet_pki.directory}"\n'
        "[shutdown]\nretry_after_min_ms = 300\nretry_after_max_ms = 600\ngrace = 1.0\n"
        '[log]\nlevel = "INFO"\nformat = "json"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay_server",
        "--config",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert proc.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        listening = await read_json_line(proc.stderr, lines, "listening")
        assert listening["relay_id"] == "relay-proc" and listening["ops_port"] > 0
        engine = make_engine(db_url)
        try:
            cert = register_device(fleet_pki, engine)
        finally:
            engine.dispose()
        async with connect(
            f"wss://127.0.0.1:{listening['port']}/agent",
            ssl=fleet_pki.client_context(cert),
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            **websocket_options(),
        ) as raw:
            await read_json_line(proc.stderr, lines, "= agent connected")
            proc.send_signal(signal.SIGTERM)
            goaway = await next_goaway(raw)
            assert goaway.code is ErrorCode.GOING_AWAY
            assert 300 <= goaway.retry_after_ms <= 600
        async with asyncio.timeout(20 * UNIT):
            rest = await proc.stderr.read()
            assert await proc.wait() == 0
        lines += [json.loads(line) for line in rest.splitlines() if line.strip()]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # Every log line is one JSON object with the standard fields; connection lines
    # carry the device and peer.
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    connected = next(line for line in lines if line["message"] == "= agent connected")
    assert connected["device"] == device_id_of(cert)
    assert connected["peer"].startswith("127.0.0.1:")
    assert any(line["message"] == "= stopped" for line in lines)
