"""The relay's event loop: TLS connections share one receive buffer and keep no decoded
peer certificate, and still carry data correctly."""

from __future__ import annotations

import asyncio

from relay_server.eventloop import SHARED_RECEIVE_BUFFER, SharedBufferSSLProtocol
from tests.relay.conftest import Fleet, device_id_of
from tunnel.aio import IncomingChannel


async def test_connections_share_the_loop_buffer(fleet: Fleet) -> None:
    certs = [fleet.device() for _ in range(3)]
    for cert in certs:
        await fleet.agent(cert)
        await fleet.wait_registered(device_id_of(cert))
    shared = asyncio.get_running_loop()._outlink_tls_buffer  # type: ignore[attr-defined]
    assert len(shared) == SHARED_RECEIVE_BUFFER
    for cert in certs:
        ws = fleet.relay.registry.agents[device_id_of(cert)].ws
        protocol = ws.transport._ssl_protocol  # type: ignore[attr-defined]
        assert isinstance(protocol, SharedBufferSSLProtocol)
        assert protocol._ssl_buffer is shared
        assert "peercert" not in protocol._extra  # decoded on request only
        peercert = ws.transport.get_extra_info("peercert")
        assert (("commonName", device_id_of(cert)),) in peercert["subject"]


async def test_bulk_data_through_many_connections_at_once(fleet: Fleet) -> None:
    """Interleaved large reads on several connections must not mix their bytes."""

    async def echo(request: IncomingChannel) -> None:
        channel = request.accept()
        async for data in channel:
            await channel.send(data)

    service = await fleet.service()
    channels = []
    for _ in range(4):
        cert = fleet.device()
        await fleet.agent(cert, on_open=echo)
        await fleet.wait_registered(device_id_of(cert))
        channels.append(await service.open_bridge(device_id_of(cert), "files"))

    async def exchange(i: int) -> None:
        payload = bytes([i]) * 200_000
        for _ in range(3):
            await channels[i].send(payload)
            assert await channels[i].recv() == payload

    await asyncio.gather(*(exchange(i) for i in range(4)))
