"""`ServiceClient`: the service side of `/service` (portal, tests, benchmarks); the ops
and their arguments are `protocol.rpc`'s.

::

    ssl = pki.tls.client_context(ca_file, cert_file, key_file)   # a service certificate
    async with await ServiceClient.connect("wss://relay:8443/service", ssl) as client:
        devices = (await client.rpc("presence"))["devices"]
        answer = await client.rpc("instruct", device=id, instruction={"action": "ping"})
        channel = await client.open_bridge(id, "diagnostics", {"shell": "sh"})

`rpc` raises `RpcError` (``code`` is the relay's error string, e.g. ``offline``);
`open_bridge` raises `tunnel.aio.ChannelRefusedError` (``UNAVAILABLE`` when the
device is not connected to this relay, or the agent's own refusal code).
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from types import TracebackType
from typing import Any

from websockets.asyncio.client import connect

from protocol.envelope import MessageError, Reply, RequestId, decode, encode_request
from tunnel import SUBPROTOCOLS, Priority, Role, Settings, priority_for_kind
from tunnel.aio import Channel, ChannelError, IncomingChannel, Tunnel, websocket_options

log = logging.getLogger(__name__)

# Replies can be larger than requests (a presence page of 1,000 devices is ~150 KiB).
MAX_REPLY = 1024 * 1024


class RpcError(Exception):
    """The relay answered ``ok: false``. ``code``/``message``/``body`` are its answer."""

    def __init__(self, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.body = body


class ServiceClient:
    """One tunnel to a relay's `/service` endpoint with a lazily opened rpc channel."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self._runner = asyncio.create_task(tunnel.run(), name=f"service-client {tunnel.name}")
        self._rpc: Channel | None = None
        self._rpc_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[RequestId, asyncio.Future[Reply]] = {}
        self._next_id = 1

    @classmethod
    async def connect(
        cls,
        url: str,
        ssl: ssl_module.SSLContext,
        *,
        settings: Settings | None = None,
        open_timeout: float = 10.0,
        name: str = "service",
        **connect_kwargs: Any,
    ) -> ServiceClient:
        """Open the WebSocket (mutual TLS) and start the tunnel."""
        ws = await connect(
            url,
            ssl=ssl,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            open_timeout=open_timeout,
            **websocket_options(),
            **connect_kwargs,
        )
        tunnel = Tunnel(ws, role=Role.CLIENT, settings=settings, on_open=_refuse, name=name)
        return cls(tunnel)

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.tunnel.close()
        await asyncio.gather(self._runner, return_exceptions=True)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def rpc(self, op: str, **args: Any) -> dict[str, Any]:
        """One request on the rpc channel; returns the reply's fields (without id/ok)."""
        channel = await self._rpc_channel()
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await channel.send(encode_request(request_id, op, **args))
            reply = await future
        finally:
            self._pending.pop(request_id, None)
        if not reply.ok:
            raise RpcError(
                str(reply.body.get("error")), str(reply.body.get("message", "")), reply.body
            )
        return reply.body

    async def open_bridge(
        self,
        device: str,
        kind: str,
        meta: dict[str, Any] | None = None,
        *,
        priority: Priority | None = None,
    ) -> Channel:
        """A channel spliced by the relay onto a new `kind` channel on the device."""
        return await self.tunnel.open_channel(
            "bridge",
            {"device": device, "channel_kind": kind, "meta": meta or {}},
            priority=priority if priority is not None else priority_for_kind(kind),
        )

    async def _rpc_channel(self) -> Channel:
        async with self._rpc_lock:
            if self._rpc is None:
                self._rpc = await self.tunnel.open_channel("rpc", max_message=MAX_REPLY)
                self._reader = asyncio.create_task(self._read_replies(self._rpc), name="rpc-reader")
            return self._rpc

    async def _read_replies(self, channel: Channel) -> None:
        error: BaseException = ConnectionError("rpc channel ended")
        try:
            async for data in channel:
                try:
                    msg = decode(data, MAX_REPLY)
                except MessageError as exc:
                    log.warning("! malformed rpc reply from the relay: %s", exc.code)
                    continue
                if not isinstance(msg, Reply):
                    continue
                future = self._pending.get(msg.id)
                if future is not None and not future.done():
                    future.set_result(msg)
        except ChannelError as exc:
            error = exc
        finally:
            self._rpc = None
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)


async def _refuse(request: IncomingChannel) -> None:
    """A relay never opens channels towards a service client."""
    request.refuse(reason="service clients accept no channels")
