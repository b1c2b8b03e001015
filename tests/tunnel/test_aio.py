"""The asyncio adapter over a real websockets server and client on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from tests.conftest import UNIT
from tests.tunnel.conftest import BlackHoleRelay, tunnel_pair
from tunnel import SUBPROTOCOLS, Connection, ErrorCode, Settings
from tunnel.aio import (
    Channel,
    ChannelRefusedError,
    ChannelResetError,
    IncomingChannel,
    Tunnel,
    TunnelClosedError,
    websocket_options,
)
from tunnel.frames import DataFrame, PingFrame
from tunnel.limits import MAX_CHUNK

T = 5 * UNIT  # generous bound for anything that should take milliseconds


async def echo(request: IncomingChannel) -> None:
    channel = request.accept({"echo": True})
    async with channel:
        async for message in channel:
            await channel.send(message)


async def roundtrip(channel: Channel, data: bytes) -> bytes:
    await channel.send(data)
    return await asyncio.wait_for(channel.recv(), T)


def fast_keepalive(factor: float) -> Settings:
    """Production keepalive timings multiplied by ``factor`` (nothing else)."""
    base = Settings()
    names = ("client_ping_idle", "client_ping_timeout", "server_ping_idle", "server_ping_timeout")
    return dataclasses.replace(base, **{n: getattr(base, n) * factor for n in names})


async def test_echo() -> None:
    async with tunnel_pair(server_on_open=echo) as pair:
        channel = await asyncio.wait_for(pair.client.open_channel("echo", {"n": 1}), T)
        assert channel.accept_meta == {"echo": True}
        assert channel.request_meta == {"n": 1}
        for size in (1, 1000, 16 * 1024, 250_000):
            payload = bytes([size % 251]) * size
            assert await roundtrip(channel, payload) == payload
        await channel.close()
        with pytest.raises(EOFError):
            await asyncio.wait_for(channel.recv(), T)
        await asyncio.wait_for(channel.wait_closed(), T)
        assert pair.client.open_channels == 0
        assert pair.client.stats["echo"].frames_out >= 5
        assert pair.server.stats["echo"].bytes_in == pair.client.stats["echo"].bytes_out


async def test_both_sides_open_many_channels() -> None:
    """60 channels alive at once (30 opened by each side), all echoing concurrently."""
    async with tunnel_pair(server_on_open=echo, client_on_open=echo) as pair:
        opens = asyncio.Semaphore(8)  # stay under the peer's pending-open limit (16)
        all_open = asyncio.Barrier(60)

        async def exercise(opener_tunnel: Tunnel, n: int) -> None:
            async with opens:
                channel = await opener_tunnel.open_channel("telemetry", {"n": n})
            await all_open.wait()
            for i in range(20):
                data = f"{n}:{i}".encode() * (n + 1)
                assert await roundtrip(channel, data) == data
            await channel.close()
            with pytest.raises(EOFError):
                await channel.recv()

        jobs = [exercise(pair.client, n) for n in range(30)]
        jobs += [exercise(pair.server, n) for n in range(30)]
        await asyncio.wait_for(asyncio.gather(*jobs), 10 * T)
        await asyncio.sleep(0)
        assert pair.client.open_channels == pair.server.open_channels == 0


async def test_opens_beyond_the_pending_limit_are_refused_not_queued() -> None:
    release = asyncio.Event()

    async def hesitant(request: IncomingChannel) -> None:
        await release.wait()
        request.accept()

    async with tunnel_pair(server_on_open=hesitant) as pair:
        opens = [asyncio.create_task(pair.client.open_channel("telemetry")) for _ in range(40)]
        await wait_until(lambda: sum(t.done() for t in opens) == 40 - 16)
        await asyncio.sleep(0.05 * UNIT)  # no further answer may arrive
        done = [t for t in opens if t.done()]
        pending = [t for t in opens if not t.done()]
        refused = [t.exception() for t in done]
        assert len(refused) == 40 - 16 and len(pending) == 16
        assert all(isinstance(e, ChannelRefusedError) for e in refused)
        assert {e.code for e in refused} == {ErrorCode.TOO_MANY_CHANNELS}  # type: ignore[union-attr]
        release.set()
        for channel in await asyncio.wait_for(asyncio.gather(*pending), T):
            await channel.close()


async def test_refusals() -> None:
    async def picky(request: IncomingChannel) -> None:
        if request.kind == "desktop":
            request.refuse(ErrorCode.FORBIDDEN, "no consent")
        elif request.kind == "files":
            raise RuntimeError("secret internal detail")
        # any other kind: return without answering

    async with tunnel_pair(server_on_open=picky) as pair:
        with pytest.raises(ChannelRefusedError) as info:
            await asyncio.wait_for(pair.client.open_channel("desktop"), T)
        assert (info.value.code, info.value.reason) == (ErrorCode.FORBIDDEN, "no consent")
        with pytest.raises(ChannelRefusedError) as info:
            await asyncio.wait_for(pair.client.open_channel("files"), T)
        assert info.value.code is ErrorCode.INTERNAL_ERROR
        assert "secret" not in info.value.reason
        with pytest.raises(ChannelRefusedError) as info:
            await asyncio.wait_for(pair.client.open_channel("telemetry"), T)
        assert info.value.code is ErrorCode.REFUSED
        # The client has no on_open handler: everything it is offered is refused.
        with pytest.raises(ChannelRefusedError) as info:
            await asyncio.wait_for(pair.server.open_channel("telemetry"), T)
        assert info.value.code is ErrorCode.REFUSED


async def test_slow_handler_times_out() -> None:
    answered: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    settings = dataclasses.replace(Settings(), accept_timeout=0.2 * UNIT)

    async def slow(request: IncomingChannel) -> None:
        await asyncio.sleep(0.4 * UNIT)  # a consent prompt nobody answers, say
        try:
            request.accept()
        except ChannelResetError as exc:
            answered.set_result(exc)

    async with tunnel_pair(server_on_open=slow, server_settings=settings) as pair:
        with pytest.raises(ChannelRefusedError) as info:
            await asyncio.wait_for(pair.client.open_channel("desktop"), T)
        assert info.value.code is ErrorCode.TIMEOUT
        assert (await asyncio.wait_for(answered, T)).code is ErrorCode.TIMEOUT  # type: ignore[attr-defined]


async def wait_until(condition: Callable[[], bool], timeout: float = T) -> None:
    """Poll a condition the code under test exposes no event for (test-only)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005 * UNIT)


async def test_cancelling_open_channel_cancels_the_request() -> None:
    seen: asyncio.Queue[IncomingChannel] = asyncio.Queue()
    never = asyncio.Event()

    async def waits(request: IncomingChannel) -> None:
        seen.put_nowait(request)
        await never.wait()

    async with tunnel_pair(server_on_open=waits) as pair:
        opening = asyncio.create_task(pair.client.open_channel("desktop"))
        request = await asyncio.wait_for(seen.get(), T)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await wait_until(lambda: request.answered)  # the RESET voided the request
        with pytest.raises(ChannelResetError) as info:
            request.accept()
        assert info.value.code is ErrorCode.CANCELLED and info.value.remote
        assert pair.server.open_channels == pair.client.open_channels == 0


async def test_slow_consumer_does_not_stall_other_channels() -> None:
    never_read: list[Channel] = []

    async def handler(request: IncomingChannel) -> None:
        if request.kind == "files":
            never_read.append(request.accept())  # accepted, then never read
        else:
            await echo(request)

    async with tunnel_pair(server_on_open=handler) as pair:
        bulk = await asyncio.wait_for(pair.client.open_channel("files"), T)
        control = await asyncio.wait_for(pair.client.open_channel("control"), T)

        async def flood() -> None:
            while True:
                await bulk.send(b"f" * 64 * 1024)

        flooding = asyncio.create_task(flood())
        try:
            await wait_until(lambda: bool(pair.client._blocked))  # backpressure engaged...
            # ...then the control channel must still answer promptly, many times.
            loop = asyncio.get_running_loop()
            for i in range(50):
                started = loop.time()
                assert await roundtrip(control, b"%d" % i) == b"%d" % i
                assert loop.time() - started < UNIT
            assert not flooding.done()
            window = pair.server.settings.bulk_window  # "files" is a BULK channel
            assert bulk.queued_bytes <= pair.client.settings.send_high_water + 64 * 1024
            assert never_read[0].buffered_bytes <= window
        finally:
            flooding.cancel()
            await asyncio.gather(flooding, return_exceptions=True)


@pytest.mark.parametrize("dead_side", ["client", "server"])
async def test_silent_drop_detected_by_both_ends(dead_side: str) -> None:
    factor = 0.02 * UNIT  # 40 s of production time = 0.8 s here
    settings = fast_keepalive(factor)
    relay = BlackHoleRelay()
    try:
        async with tunnel_pair(
            server_on_open=echo,
            server_settings=settings,
            client_settings=settings,
            on_listen=relay.start,
        ) as pair:
            channel = await asyncio.wait_for(pair.client.open_channel("control"), T)
            assert await roundtrip(channel, b"before") == b"before"
            # Keepalive runs and measures the round trip while the path is fine.
            await wait_until(lambda: pair.client.rtt is not None)
            loop = asyncio.get_running_loop()
            if dead_side == "server":
                await channel.send(b"last word")  # the last frame went client -> server
            relay.drop()
            dropped = loop.time()
            waits = [pair.client.closed.wait(), pair.server.closed.wait()]
            await asyncio.wait_for(asyncio.gather(*waits), 60 * factor + T)
            elapsed = loop.time() - dropped
            assert elapsed <= 40 * factor + 0.5 * UNIT, elapsed
            for tunnel in (pair.client, pair.server):
                assert tunnel.error_code is ErrorCode.TIMEOUT
                assert tunnel.close_code == 1011
            with pytest.raises(TunnelClosedError) as info:
                await channel.recv()
            assert info.value.code is ErrorCode.TIMEOUT
    finally:
        await relay.aclose()


async def test_peer_vanishing_without_close_frame() -> None:
    async with tunnel_pair(server_on_open=echo) as pair:
        channel = await asyncio.wait_for(pair.client.open_channel("control"), T)
        receiving = asyncio.create_task(channel.recv())
        await asyncio.sleep(0)
        pair.server._ws.transport.abort()  # the relay process died: RST, no close frame
        await asyncio.wait_for(pair.client.closed.wait(), T)
        assert pair.client.close_code == 1006
        assert pair.client.error_code is ErrorCode.UNAVAILABLE
        with pytest.raises(TunnelClosedError):
            await asyncio.wait_for(receiving, T)
        with pytest.raises(TunnelClosedError):
            await channel.send(b"x")
        with pytest.raises(TunnelClosedError):
            await pair.client.open_channel("control")


async def test_backpressure_bounds_memory() -> None:
    """50 MB at a channel nobody reads: the sender stops, buffers stay bounded; once the
    reader starts, everything arrives intact and in order."""
    accepted: asyncio.Queue[Channel] = asyncio.Queue()
    settings = Settings(
        window=256 * 1024,
        bulk_window=256 * 1024,
        max_message=256 * 1024,
        send_high_water=128 * 1024,
    )

    async def handler(request: IncomingChannel) -> None:
        accepted.put_nowait(request.accept())

    async with tunnel_pair(
        server_on_open=handler, server_settings=settings, client_settings=settings
    ) as pair:
        channel = await asyncio.wait_for(pair.client.open_channel("files"), T)
        remote = await asyncio.wait_for(accepted.get(), T)
        chunk = 64 * 1024
        total = 50 * 1024 * 1024
        sent = 0
        peak_queued = 0

        async def sender() -> None:
            nonlocal sent, peak_queued
            for i in range(total // chunk):
                await channel.send(i.to_bytes(4, "big") * (chunk // 4))
                sent += chunk
                peak_queued = max(peak_queued, pair.client.queued_bytes)

        sending = asyncio.create_task(sender())
        await wait_until(lambda: bool(pair.client._blocked))
        await asyncio.sleep(0.1 * UNIT)  # give a leak the chance to show
        # Sender side: the channel backlog + one message; in flight: the window plus the
        # WebSocket/TCP buffers between the processes (a few hundred KiB on loopback).
        assert pair.client.queued_bytes <= settings.send_high_water + chunk
        buffered = remote.buffered_bytes
        assert buffered <= settings.window
        assert sent <= settings.send_high_water + settings.window + 4 * 1024 * 1024
        assert not sending.done()

        received = 0
        index = 0
        while received < total:
            message = await asyncio.wait_for(remote.recv(), T)
            assert message[:4] == index.to_bytes(4, "big")
            index += 1
            received += len(message)
            peak_queued = max(peak_queued, pair.client.queued_bytes)
        await asyncio.wait_for(sending, T)
        assert peak_queued <= settings.send_high_water + chunk
        assert pair.client.stats["files"].bytes_out >= total


async def test_goaway_then_close() -> None:
    async with tunnel_pair(server_on_open=echo) as pair:
        channel = await asyncio.wait_for(pair.client.open_channel("control"), T)
        await pair.server.go_away(ErrorCode.GOING_AWAY, 750, "restarting")
        while pair.client.goaway is None:
            assert await roundtrip(channel, b"still works") == b"still works"
        assert pair.client.goaway.retry_after_ms == 750
        with pytest.raises(ChannelRefusedError) as info:
            await pair.client.open_channel("control")
        assert info.value.code is ErrorCode.GOING_AWAY
        assert await roundtrip(channel, b"existing channel") == b"existing channel"
        await pair.server.close(ErrorCode.GOING_AWAY, "restarting")
        await asyncio.wait_for(pair.client.closed.wait(), T)
        assert pair.client.error_code is ErrorCode.GOING_AWAY
        assert pair.client.close_code == 1001
        with pytest.raises(TunnelClosedError) as closed:
            await channel.recv()
        assert closed.value.code is ErrorCode.GOING_AWAY


@pytest.mark.parametrize(
    ("code", "close_code"),
    [(ErrorCode.NO_ERROR, 1000), (ErrorCode.REPLACED, 1001), (ErrorCode.REVOKED, 1008)],
)
async def test_close_reports_code_to_peer(code: ErrorCode, close_code: int) -> None:
    async with tunnel_pair(server_on_open=echo) as pair:
        channel = await asyncio.wait_for(pair.client.open_channel("control"), T)
        await asyncio.wait_for(pair.server.close(code, "bye"), T)
        await asyncio.wait_for(pair.client.closed.wait(), T)
        assert pair.server.closed.is_set()
        assert pair.client.error_code is code
        assert pair.client.goaway is not None and pair.client.goaway.reason == "bye"
        assert pair.client.close_code == close_code
        with pytest.raises(TunnelClosedError):
            await channel.send(b"x")


async def test_run_returns_and_leaves_no_tasks() -> None:
    started: asyncio.Event = asyncio.Event()

    async def lingering(request: IncomingChannel) -> None:
        request.accept()
        started.set()
        await asyncio.sleep(3600)  # a handler that would outlive the tunnel

    before = asyncio.all_tasks()
    async with tunnel_pair(server_on_open=lingering) as pair:
        await asyncio.wait_for(pair.client.open_channel("files"), T)
        await asyncio.wait_for(started.wait(), T)
    await asyncio.sleep(0)
    leftovers = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not {t for t in leftovers if (t.get_name() or "").startswith("tunnel[")}


async def test_channel_reset_reaches_the_peer() -> None:
    accepted: asyncio.Queue[Channel] = asyncio.Queue()

    async def handler(request: IncomingChannel) -> None:
        accepted.put_nowait(request.accept())

    async with tunnel_pair(server_on_open=handler) as pair:
        channel = await asyncio.wait_for(pair.client.open_channel("files"), T)
        remote = await asyncio.wait_for(accepted.get(), T)
        channel.reset(ErrorCode.CANCELLED, "user pressed stop")
        with pytest.raises(ChannelResetError) as info:
            await asyncio.wait_for(remote.recv(), T)
        assert info.value.remote and info.value.reason == "user pressed stop"
        with pytest.raises(ChannelResetError) as local:
            await channel.send(b"x")
        assert not local.value.remote
        channel.reset()  # idempotent
        await channel.close()  # a no-op on a failed channel
        assert pair.client.open_channels == 0


async def _raw_client(port: int) -> ClientConnection:
    subprotocols = [Subprotocol(p) for p in SUBPROTOCOLS]
    return await connect(
        f"ws://127.0.0.1:{port}/", subprotocols=subprotocols, **websocket_options()
    )


@pytest.mark.parametrize(
    "bad",
    [
        b"\x63\x00\x00\x00\x00\x01",  # unknown frame type
        DataFrame(1, b"x", False).encode(),  # a channel never opened
        "a text message",
    ],
)
async def test_protocol_error_closes_with_1002(
    bad: bytes | str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with tunnel_pair() as pair:
        raw = await _raw_client(pair.port)
        try:
            await raw.send(PingFrame(1).encode())
            await raw.send(bad)
            await asyncio.wait_for(raw.wait_closed(), T)
            assert raw.close_code == 1002
        finally:
            await raw.close()
        server_side = await asyncio.wait_for(pair.accepted.get(), T)
        await asyncio.wait_for(server_side.closed.wait(), T)
        assert server_side.error_code is ErrorCode.PROTOCOL_ERROR
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_oversize_websocket_message_is_frame_too_large() -> None:
    async with tunnel_pair() as pair:
        raw = await _raw_client(pair.port)
        try:
            await raw.send(DataFrame(1, b"x", False).encode() + bytes(MAX_CHUNK))
            await asyncio.wait_for(raw.wait_closed(), T)
            assert raw.close_code == 1009
        finally:
            await raw.close()
        server_side = await asyncio.wait_for(pair.accepted.get(), T)
        await asyncio.wait_for(server_side.closed.wait(), T)
        assert server_side.error_code is ErrorCode.FRAME_TOO_LARGE


def test_tunnel_requires_the_tunnel_subprotocol() -> None:
    from tunnel import Role
    from tunnel.aio import Tunnel

    class FakeWebSocket:
        subprotocol = "outlink.enroll.v1"

    with pytest.raises(ValueError):
        Tunnel(FakeWebSocket(), role=Role.SERVER)  # type: ignore[arg-type]


async def test_concurrent_senders_on_one_channel_under_backpressure() -> None:
    accepted: asyncio.Queue[Channel] = asyncio.Queue()
    settings = Settings(
        window=128 * 1024, bulk_window=128 * 1024, max_message=128 * 1024, send_high_water=64 * 1024
    )

    async def handler(request: IncomingChannel) -> None:
        accepted.put_nowait(request.accept())

    async with tunnel_pair(
        server_on_open=handler, server_settings=settings, client_settings=settings
    ) as pair:
        channel = await asyncio.wait_for(pair.client.open_channel("files"), T)
        remote = await asyncio.wait_for(accepted.get(), T)

        async def sender(task: int) -> None:
            for seq in range(20):
                await channel.send(bytes([task, seq]) * 16 * 1024)

        senders = [asyncio.create_task(sender(task)) for task in range(5)]
        await wait_until(lambda: bool(pair.client._blocked))
        senders[2].cancel()  # one sender gives up while waiting for room
        received: dict[int, list[int]] = {task: [] for task in range(5)}
        while not all(s.done() for s in senders) or remote.buffered_bytes:
            message = await asyncio.wait_for(remote.recv(), T)
            assert len(message) == 32 * 1024 and message == message[:2] * 16 * 1024
            received[message[0]].append(message[1])
        assert senders[2].cancelled()
        for task, seqs in received.items():
            expected = list(range(20)) if task != 2 else list(range(len(seqs)))
            assert seqs == expected, task
        assert len(received[2]) < 20


async def test_a_writer_bug_closes_the_tunnel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with tunnel_pair(server_on_open=echo) as pair:
        channel = await asyncio.wait_for(pair.client.open_channel("control"), T)

        real = Connection.next_frame_parts

        def broken(self: Connection) -> tuple[bytes, bytes | memoryview] | None:
            if self is pair.client._conn:
                raise RuntimeError("bug")
            return real(self)

        monkeypatch.setattr(Connection, "next_frame_parts", broken)
        await channel.send(b"x")
        await asyncio.wait_for(pair.client.closed.wait(), T)
        assert pair.client.error_code is ErrorCode.INTERNAL_ERROR
        assert "writer failed" in caplog.text
