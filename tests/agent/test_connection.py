"""The connection manager against a real TLS relay (stub), in process."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from agent import errors
from agent.audit import AuditLog, read_entries
from agent.config import AgentConfig, BackoffConfig, KeepaliveConfig
from agent.connection import ConnectionManager
from agent.control import InstructionError, Registry
from agent.identity import IdentityFiles
from agent.status import read_status
from pki.identity import identity_from_cert
from tests.agent.conftest import Fleet, expired, renewal_due
from tests.agent.helpers import Blackhole, RecordingTLSServer, free_port, tinyproxy
from tests.agent.relay_stub import StubRelay
from tests.conftest import UNIT
from tunnel import ErrorCode
from tunnel.aio import ChannelRefusedError, IncomingChannel

T = 10 * UNIT  # generous bound for "should happen promptly"


def make_config(fleet: Fleet, tmp_path: Path, urls: list[str], **kwargs: Any) -> AgentConfig:
    return dataclasses.replace(
        AgentConfig(),
        relay_urls=tuple(urls),
        ca_file=str(fleet.ca_file),
        identity_dir=str(kwargs.pop("identity_dir", None) or fleet.identity_dir(tmp_path.name)),
        data_dir=str(tmp_path / "data"),
        proxy=kwargs.pop("proxy", "none"),
        open_timeout=2 * UNIT,
        **kwargs,
    )


@pytest.fixture
async def relay(fleet: Fleet) -> AsyncIterator[StubRelay]:
    stub = await StubRelay(fleet).start()
    yield stub
    if stub._server is not None:
        await stub.stop()


@pytest.fixture
async def run_agent() -> AsyncIterator[Callable[..., ConnectionManager]]:
    """Start managers in tasks; stop them cleanly at the end of the test."""
    running: list[tuple[ConnectionManager, asyncio.Task[None]]] = []

    def start(config: AgentConfig, registry: Registry | None = None) -> ConnectionManager:
        manager = ConnectionManager(config, registry or Registry(), rng=random.Random(1))
        running.append((manager, asyncio.create_task(manager.run())))
        return manager

    yield start
    for manager, task in running:
        manager.stop()
        await asyncio.wait_for(task, T)


async def test_connects_says_hello_and_reports_status(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    registry = Registry()

    @registry.action("ping")
    async def ping(instruction: dict[str, Any]) -> dict[str, Any]:
        return {"pong": instruction.get("n")}

    config = make_config(fleet, tmp_path, [relay.url])
    manager = run_agent(config, registry)
    link = await relay.wait_link(0, T)
    await asyncio.wait_for(manager.connected.wait(), T)
    assert link.hello["capabilities"] == ["action:ping"]
    assert link.hello["version"]
    status = read_status(Path(config.data_dir))
    assert status["connected"] is True
    assert status["relay"] == relay.url
    assert status["device_id"] == link.identity.device_id


async def test_instructions_run_only_registered_actions(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    registry = Registry()
    seen: list[dict[str, Any]] = []

    @registry.action("ping")
    async def ping(instruction: dict[str, Any]) -> dict[str, Any]:
        seen.append(instruction)
        return {"pong": instruction.get("n")}

    @registry.action("fail")
    async def fail(instruction: dict[str, Any]) -> None:
        raise InstructionError("busy_device", "the device is scanning")

    @registry.action("crash")
    async def crash(instruction: dict[str, Any]) -> None:
        raise RuntimeError("secret internal detail")

    audit = AuditLog(tmp_path / "audit.log")
    audit.wrap_actions(registry)
    run_agent(make_config(fleet, tmp_path, [relay.url]), registry)
    link = await relay.wait_link(0, T)
    reply = await relay.instruct(link, {"action": "ping", "n": 7}, T)
    assert reply.ok and reply.body == {"result": {"pong": 7}}
    reply = await relay.instruct(link, {"action": "format_disk"}, T)
    assert not reply.ok and reply.error == "unknown_action"
    reply = await relay.instruct(link, {"action": "fail"}, T)
    assert not reply.ok and reply.error == "busy_device"
    assert reply.body["message"] == "the device is scanning"
    reply = await relay.instruct(link, {"action": "crash"}, T)
    assert not reply.ok and reply.error == "internal"
    assert "secret" not in str(reply.body)
    assert seen == [{"action": "ping", "n": 7}]
    # The local audit holds every instruction, the refused unknown one included (R21).
    entries = [e for _, e, _ in read_entries(audit.path) if e]
    assert [(e["outcome"], e["detail"]["action"]) for e in entries] == [
        ("ok", "ping"),
        ("refused", "format_disk"),
        ("refused", "fail"),
        ("error", "crash"),
    ]


async def test_relay_opened_channels_go_to_registered_kinds_only(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    registry = Registry()

    @registry.channel("echo")
    async def echo(request: IncomingChannel) -> None:
        channel = request.accept({})
        async for message in channel:
            await channel.send(message)

    audit = AuditLog(tmp_path / "audit.log")
    audit.wrap_actions(registry)
    run_agent(make_config(fleet, tmp_path, [relay.url]), registry)
    link = await relay.wait_link(0, T)
    channel = await asyncio.wait_for(link.tunnel.open_channel("echo"), T)
    await channel.send(b"hi")
    assert await asyncio.wait_for(channel.recv(), T) == b"hi"
    for kind in ("shell", "control"):
        with pytest.raises(ChannelRefusedError) as refused:
            await asyncio.wait_for(link.tunnel.open_channel(kind), T)
        assert refused.value.code is ErrorCode.REFUSED
    entries = [e for _, e, _ in read_entries(audit.path) if e]
    assert [(e["outcome"], e["detail"]["channel"]) for e in entries] == [
        ("opened", "echo"),
        ("refused", "shell"),
        ("refused", "control"),
    ]


async def test_failover_to_the_second_relay(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    dead = f"wss://localhost:{free_port()}/agent"
    manager = run_agent(make_config(fleet, tmp_path, [dead, relay.url]))
    await relay.wait_link(0, T)
    await asyncio.wait_for(manager.connected.wait(), T)
    assert manager.connections == 1
    assert read_status(tmp_path / "data")["relay"] == relay.url


@pytest.mark.parametrize("which", ["foreign", "wrong_host"])
async def test_untrusted_relay_gets_nothing_and_raises_the_alarm(
    fleet: Fleet, tmp_path: Path, run_agent: Callable[..., ConnectionManager], which: str
) -> None:
    from pki.tls import server_context

    cert, key = (
        (fleet.foreign_cert, fleet.foreign_key)
        if which == "foreign"
        else (fleet.wrong_host_cert, fleet.wrong_host_key)
    )
    async with RecordingTLSServer(server_context(cert, key, fleet.ca_file)) as server:
        url = f"wss://localhost:{server.port}/agent"
        manager = run_agent(make_config(fleet, tmp_path, [url]))
        await asyncio.wait_for(manager.waiting.wait(), T)
        await asyncio.wait_for(server.finished.wait(), T)
        assert server.tcp_connections == 1
        assert server.handshakes_done == 0
        assert server.received == b""  # not one byte of HTTP, let alone data
        # Retried no faster than the backoff cap.
        assert manager.next_delay >= config_cap()
    alarms = read_status(tmp_path / "data")["alarms"]
    expected = errors.RELAY_CERT_UNTRUSTED if which == "foreign" else errors.RELAY_HOSTNAME_MISMATCH
    assert [a["code"] for a in alarms] == [expected]


def config_cap() -> float:
    return BackoffConfig().cap


async def test_revoked_certificate_raises_the_alarm_and_connecting_clears_it(
    fleet: Fleet, tmp_path: Path, relay: StubRelay
) -> None:
    identity_dir = fleet.identity_dir("revoked")
    cert = x509.load_pem_x509_certificate(IdentityFiles(identity_dir).cert_file.read_bytes())
    relay.refused_serials.add(identity_from_cert(cert).serial)
    config = make_config(fleet, tmp_path, [relay.url], identity_dir=identity_dir)
    for attempt in (1, 2):
        manager = ConnectionManager(config, Registry(), rng=random.Random(attempt))
        task = asyncio.create_task(manager.run())
        try:
            if attempt == 1:
                await asyncio.wait_for(manager.waiting.wait(), T)
                assert manager.next_delay >= config_cap()
                alarms = read_status(tmp_path / "data")["alarms"]
                assert [a["code"] for a in alarms] == [errors.CLIENT_CERT_REFUSED]
                # A human sorts it out (here: un-revoke) and restarts the agent.
                relay.refused_serials.clear()
            else:
                # The alarm survived the restart until the connection succeeded.
                await asyncio.wait_for(manager.connected.wait(), T)
                assert read_status(tmp_path / "data")["alarms"] == []
        finally:
            manager.stop()
            await asyncio.wait_for(task, T)


async def test_expired_own_certificate_is_an_alarm_without_dialling(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    config = make_config(
        fleet, tmp_path, [relay.url], identity_dir=fleet.identity_dir("expired", **expired())
    )
    manager = run_agent(config)
    await asyncio.wait_for(manager.waiting.wait(), T)
    assert relay.links == []
    alarms = read_status(tmp_path / "data")["alarms"]
    assert [a["code"] for a in alarms] == [errors.LOCAL_CREDENTIALS]
    assert "expired" in alarms[0]["detail"]


async def test_graceful_relay_restart_brings_the_agent_back_promptly(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    """Default backoff settings: GOAWAY retry_after 0.5 s + up to 1 s jitter."""
    manager = run_agent(make_config(fleet, tmp_path, [relay.url]))
    await relay.wait_link(0, T)
    loop = asyncio.get_running_loop()
    await relay.stop(goaway_ms=500)
    stopped_at = loop.time()
    await relay.start()  # same port
    await relay.wait_link(1, 5 * UNIT)
    assert loop.time() - stopped_at < 5 * UNIT
    await asyncio.wait_for(manager.connected.wait(), T)
    assert manager.connections == 2


async def test_relay_crash_mid_stream_brings_the_agent_back(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    """No GOAWAY. The link was stable, so the agent waits U(0, herd_window): 2 s here
    (20 s by default; see test_backoff for why a fleet needs that)."""
    registry = Registry()

    @registry.channel("stream")
    async def stream(request: IncomingChannel) -> None:
        channel = request.accept({})
        while True:
            await channel.send(b"x" * 1000)

    config = make_config(
        fleet,
        tmp_path,
        [relay.url],
        backoff=BackoffConfig(herd_window=2.0 * UNIT, stable_after=0.1 * UNIT),
    )
    manager = run_agent(config, registry)
    link = await relay.wait_link(0, T)
    channel = await asyncio.wait_for(link.tunnel.open_channel("stream"), T)
    await asyncio.wait_for(channel.recv(), T)  # mid-stream
    await asyncio.sleep(0.1 * UNIT)  # let the link become "stable" (stable_after)
    await relay.stop()  # TCP dropped, no close frame
    await relay.start()
    await relay.wait_link(1, 5 * UNIT)
    await asyncio.wait_for(manager.connected.wait(), T)
    assert manager.connections == 2


async def test_connects_through_tinyproxy_with_basic_auth(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    with tinyproxy(tmp_path) as proxy:
        manager = run_agent(make_config(fleet, tmp_path, [relay.url], proxy=proxy.url()))
        await relay.wait_link(0, T)
        await asyncio.wait_for(manager.connected.wait(), T)
        assert proxy.connects() == 1
        status = read_status(tmp_path / "data")
        assert "***" in status["proxy"]
        assert "s3cret" not in (tmp_path / "data" / "status.json").read_text()


async def test_refused_by_tinyproxy_without_the_password(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    with tinyproxy(tmp_path) as proxy:
        manager = run_agent(make_config(fleet, tmp_path, [relay.url], proxy=proxy.url(user=None)))
        await asyncio.wait_for(manager.waiting.wait(), T)
    assert relay.links == []
    assert [a["code"] for a in read_status(tmp_path / "data")["alarms"]] == [
        errors.PROXY_AUTH_FAILED
    ]


async def test_certificate_renewal_over_the_control_channel(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    identity_dir = fleet.identity_dir("renew", **renewal_due())
    files = IdentityFiles(identity_dir)
    old_key = files.key_file.read_bytes()
    config = make_config(fleet, tmp_path, [relay.url], identity_dir=identity_dir)
    run_agent(config)
    link = await relay.wait_link(0, T)
    async with asyncio.timeout(T):
        while files.key_file.read_bytes() == old_key:
            await asyncio.sleep(0.05 * UNIT)  # the file swap has no event to wait on
    assert relay.renewals == [link.identity.serial]
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    new_cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    new = identity_from_cert(new_cert)
    assert new.serial != link.identity.serial
    assert new.device_id == link.identity.device_id
    # The new certificate is used from the next connection on.
    await relay.stop()
    await relay.start()
    link2 = await relay.wait_link(1, 30 * UNIT)
    assert link2.identity.serial == new.serial


async def test_silently_dropping_path_is_detected_and_redialled(
    fleet: Fleet, tmp_path: Path, relay: StubRelay, run_agent: Callable[..., ConnectionManager]
) -> None:
    """No FIN, no RST: the tunnel keepalive (here 0.3 s idle + 0.5 s timeout; 15 + 20 s
    in production, under the 40 s the issue allows) notices and the agent redials."""
    async with Blackhole(relay.port) as path:
        config = make_config(
            fleet,
            tmp_path,
            [f"wss://localhost:{path.port}/agent"],
            keepalive=KeepaliveConfig(idle=0.3 * UNIT, timeout=0.5 * UNIT),
        )
        manager = run_agent(config)
        await relay.wait_link(0, T)
        await asyncio.wait_for(manager.connected.wait(), T)
        loop = asyncio.get_running_loop()
        path.drop()
        dropped_at = loop.time()
        await relay.wait_link(1, T)
        # Detection (<= 0.8 s) plus one failure window of the backoff (<= 1 s).
        assert loop.time() - dropped_at < 0.8 * UNIT + 1.0 + 2 * UNIT
        assert read_status(tmp_path / "data")["last_error"]["detail"] == "tunnel lost: TIMEOUT"


async def test_stop_during_a_hanging_dial_returns_at_once(fleet: Fleet, tmp_path: Path) -> None:
    """A relay that accepts TCP and then says nothing: SIGTERM must not wait 15 s."""
    writers: list[asyncio.StreamWriter] = []
    accepted = asyncio.Event()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # the TCP connection is there; TLS will never answer
        accepted.set()

    silent = await asyncio.start_server(accept, "127.0.0.1", 0)
    url = f"wss://localhost:{silent.sockets[0].getsockname()[1]}/agent"
    config = dataclasses.replace(make_config(fleet, tmp_path, [url]), open_timeout=15.0)
    manager = ConnectionManager(config, Registry(), rng=random.Random(1))
    task = asyncio.create_task(manager.run())
    try:
        await asyncio.wait_for(accepted.wait(), T)
        manager.stop()
        await asyncio.wait_for(task, 1 * UNIT)
        assert read_status(tmp_path / "data")["state"] == "stopped"
    finally:
        for writer in writers:
            writer.close()
        silent.close()
        await silent.wait_closed()
