"""A minimal relay for agent tests: real TLS (pki contexts), real websockets, real tunnel.

It speaks what the agent needs from `/agent`: a device certificate is required
(HTTP 401 without one, 403 for serials in `refused_serials`), the control
channel answers ``hello`` and ``renew`` (signing with the fleet CA) and can send
``instruct`` requests; the relay can open channels to the agent, say GOAWAY,
and be stopped and started again on the same port. The real relay lives in
`relay_server/`; this stub keeps the agent's tests independent of its features.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from pki.ca import CertificateAuthority
from pki.identity import DeviceIdentity, IdentityError, identity_from_peercert
from pki.issue import sign_device_csr
from pki.tls import server_context
from protocol.control import Hello, Instruct, Renew, parse
from protocol.envelope import MessageError, Reply, encode_error, encode_reply, encode_request
from tests.agent.conftest import Fleet
from tunnel import ErrorCode, Role, Settings
from tunnel.aio import Channel, IncomingChannel, Tunnel, select_subprotocol, websocket_options
from tunnel.subprotocol import SUBPROTOCOLS


@dataclass
class Link:
    """One agent connection as the stub relay sees it."""

    identity: DeviceIdentity
    tunnel: Tunnel
    hello: dict[str, Any] = field(default_factory=dict)
    control: Channel | None = None
    hello_received: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    replies: dict[int | str, asyncio.Future[Reply]] = field(default_factory=dict)
    # Replies to requests the stub did not make through `instruct` (raw test messages).
    unmatched: asyncio.Queue[Reply] = field(default_factory=asyncio.Queue)
    # Messages from the agent the stub could not parse (e.g. an "id": null error).
    unparseable: list[bytes] = field(default_factory=list)


class StubRelay:
    def __init__(self, fleet: Fleet, *, cert: str = "relay", port: int = 0) -> None:
        self.fleet = fleet
        self.ca: CertificateAuthority = fleet.ca
        self.cert, self.key = (
            (fleet.relay_cert, fleet.relay_key)
            if cert == "relay"
            else (fleet.foreign_cert, fleet.foreign_key)
        )
        self.port = port
        self.links: list[Link] = []
        self.new_link = asyncio.Event()
        self.refused_serials: set[str] = set()
        self.renewals: list[str] = []
        self.settings = Settings()
        self._server: Server | None = None
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"wss://localhost:{self.port}/agent"

    async def start(self) -> StubRelay:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            self.port,
            ssl=server_context(self.cert, self.key, self.fleet.ca_file),
            process_request=self._check_client,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            select_subprotocol=select_subprotocol,
            **websocket_options(),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self, *, goaway_ms: int | None = None) -> None:
        """Stop listening and end every link: with GOAWAY (graceful) or by dropping TCP."""
        assert self._server is not None
        self._server.close(close_connections=False)
        for link in self.links:
            if link.tunnel.closed.is_set():
                continue
            if goaway_ms is None:
                link.tunnel._ws.transport.abort()  # a crash: no GOAWAY, no close frame
            else:
                await link.tunnel.go_away(ErrorCode.GOING_AWAY, goaway_ms, "restart")
                await link.tunnel.close(ErrorCode.GOING_AWAY, "restart")
        await self._server.wait_closed()
        self._server = None

    async def wait_link(self, index: int, timeout: float) -> Link:
        """Wait until the `index`-th link (0-based) said hello."""
        async with asyncio.timeout(timeout):
            while len(self.links) <= index:
                self.new_link.clear()
                await self.new_link.wait()
            await self.links[index].hello_received.wait()
        return self.links[index]

    async def instruct(self, link: Link, instruction: dict[str, Any], timeout: float) -> Reply:
        assert link.control is not None
        request_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        link.replies[request_id] = future
        await link.control.send(encode_request(request_id, "instruct", instruction=instruction))
        return await asyncio.wait_for(future, timeout)

    # -- server side ---------------------------------------------------------------------

    def _check_client(self, conn: ServerConnection, request: Request) -> Response | None:
        ssl_object = conn.transport.get_extra_info("ssl_object")
        try:
            identity = identity_from_peercert(ssl_object.getpeercert())
        except IdentityError:
            return conn.respond(http.HTTPStatus.UNAUTHORIZED, "device certificate required\n")
        if not isinstance(identity, DeviceIdentity) or identity.serial in self.refused_serials:
            return conn.respond(http.HTTPStatus.FORBIDDEN, "forbidden\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        identity = identity_from_peercert(ws.transport.get_extra_info("ssl_object").getpeercert())
        assert isinstance(identity, DeviceIdentity)
        link: Link

        async def on_open(request: IncomingChannel) -> None:
            if request.kind != "control" or link.control is not None:
                request.refuse(ErrorCode.REFUSED, "unknown kind")
                return
            link.control = request.accept({})
            await self._serve_control(link)

        tunnel = Tunnel(ws, role=Role.SERVER, settings=self.settings, on_open=on_open, name="stub")
        link = Link(identity, tunnel)
        self.links.append(link)
        self.new_link.set()
        try:
            await tunnel.run()
        finally:
            link.ended.set()

    async def _serve_control(self, link: Link) -> None:
        assert link.control is not None
        async for data in link.control:
            try:
                msg = parse(data)
            except MessageError as exc:
                link.unparseable.append(data)
                if exc.request_id is not None:
                    await link.control.send(encode_error(exc.request_id, exc.code, exc.message))
                continue
            if isinstance(msg, Hello):
                link.hello = {"version": msg.version, "capabilities": list(msg.capabilities)}
                reply = encode_reply(msg.id, relay_id="stub", time=time.time())
                await link.control.send(reply)
                link.hello_received.set()
            elif isinstance(msg, Renew):
                self.renewals.append(link.identity.serial)
                cert = sign_device_csr(
                    self.ca,
                    msg.csr.encode(),
                    device_id=link.identity.device_id,
                    customer=link.identity.customer,
                    site=link.identity.site,
                )
                pem = cert.public_bytes(serialization.Encoding.PEM).decode()
                reply = encode_reply(
                    msg.id,
                    device_id=link.identity.device_id,
                    certificate=pem,
                    ca_certificate=self.ca.cert_pem.decode(),
                )
                await link.control.send(reply)
            elif isinstance(msg, Instruct):
                await link.control.send(encode_error(msg.id, "unknown_op", "relay side"))
            elif isinstance(msg, Reply):
                future = link.replies.pop(msg.id, None)
                if future is not None and not future.done():
                    future.set_result(msg)
                else:
                    link.unmatched.put_nowait(msg)
