"""Fixtures for adapter tests: a real websockets server and client on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from tests.conftest import UNIT
from tunnel import SUBPROTOCOLS, Role, Settings
from tunnel.aio import OpenHandler, Tunnel, select_subprotocol, websocket_options


@dataclass
class TunnelPair:
    """A client Tunnel connected to a server Tunnel through a real WebSocket."""

    client: Tunnel
    server: Tunnel
    port: int
    accepted: asyncio.Queue[Tunnel]  # server tunnels of any further connections
    runners: list[asyncio.Task[None]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def tunnel_pair(
    *,
    server_on_open: OpenHandler | None = None,
    client_on_open: OpenHandler | None = None,
    server_settings: Settings | None = None,
    client_settings: Settings | None = None,
    connect_port: int | None = None,
    on_listen: object = None,
) -> AsyncIterator[TunnelPair]:
    """Serve one tunnel on 127.0.0.1 and connect a client tunnel to it.

    ``on_listen(port) -> port`` may interpose something (a TCP relay) between them.
    """
    accepted: asyncio.Queue[Tunnel] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        tunnel = Tunnel(
            ws, role=Role.SERVER, settings=server_settings, on_open=server_on_open, name="server"
        )
        accepted.put_nowait(tunnel)
        await tunnel.run()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol(p) for p in SUBPROTOCOLS],
        select_subprotocol=select_subprotocol,
        close_timeout=UNIT,
        **websocket_options(),
    ) as server:
        port = server.sockets[0].getsockname()[1]
        if on_listen is not None:
            port = await on_listen(port)  # type: ignore[operator]
        async with connect(
            f"ws://127.0.0.1:{port}/",
            subprotocols=[Subprotocol(p) for p in SUBPROTOCOLS],
            close_timeout=UNIT,
            **websocket_options(),
        ) as ws:
            client = Tunnel(
                ws,
                role=Role.CLIENT,
                settings=client_settings,
                on_open=client_on_open,
                name="client",
            )
            runner = asyncio.create_task(client.run())
            server_tunnel = await asyncio.wait_for(accepted.get(), 5 * UNIT)
            pair = TunnelPair(client, server_tunnel, port, accepted, [runner])
            try:
                yield pair
            finally:
                await asyncio.wait_for(client.close(), 5 * UNIT)
                await asyncio.wait_for(runner, 5 * UNIT)
                await asyncio.wait_for(server_tunnel.closed.wait(), 5 * UNIT)


class BlackHoleRelay:
    """A TCP relay between client and server that can silently stop forwarding.

    After :meth:`drop`, bytes are read and discarded in both directions and no FIN or
    RST is sent: the path looks alive to both TCP stacks but carries nothing, which is
    what a NAT or firewall that forgot the flow does.
    """

    def __init__(self) -> None:
        self.dropped = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, target_port: int) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
            self._writers += [writer, up_writer]
            for src, dst in ((reader, up_writer), (up_reader, writer)):
                task = asyncio.create_task(self._pipe(src, dst))
                self._tasks.add(task)

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if not self.dropped:
                    dst.write(data)
                    await dst.drain()
        if not self.dropped:
            dst.close()

    def drop(self) -> None:
        self.dropped = True

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
