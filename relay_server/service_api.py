"""The relay's side of the portal <-> relay contract: `/service` rpc and bridge channels.

A service client (the portal, tests, benchmarks) connects to `/service` with a
service certificate and speaks the tunnel protocol. It opens:

* ``rpc`` channels: JSON requests (`relay_server.rpc`), answered concurrently (at most
  MAX_RPC_INFLIGHT per channel; beyond that the relay stops reading, which is
  backpressure, not an error);
* ``bridge`` channels: the relay opens a channel of the requested kind on the
  device's tunnel and, once the agent accepts, accepts the service's channel and
  splices the two (`relay_server.splice`).

The service's name (from its certificate) is passed to the agent as ``requested_by``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pki.identity import ServiceIdentity
from relay_server import logs, rpc
from relay_server.agent_link import AgentLink, AgentUnavailable
from relay_server.envelope import (
    ERR_INTERNAL,
    ERR_TIMEOUT,
    MessageError,
    RequestId,
    encode_error,
    encode_reply,
)
from relay_server.links import Link
from relay_server.metrics import kind_label
from relay_server.splice import splice
from tunnel import ErrorCode
from tunnel.aio import (
    ChannelError,
    ChannelRefusedError,
    ChannelResetError,
    IncomingChannel,
    TunnelClosedError,
)

if TYPE_CHECKING:
    from relay_server.server import Relay

log = logging.getLogger(__name__)

# Concurrent requests per rpc channel. An `instruct` may wait for a device for up to
# MAX_INSTRUCT_TIMEOUT; this many can wait at once before the relay stops reading.
MAX_RPC_INFLIGHT = 32


class ServiceLink(Link):
    """A service client with an open tunnel on this relay."""

    __slots__ = ("_relay",)

    identity: ServiceIdentity

    def __init__(self, identity: ServiceIdentity, peer: str, ws: Any, relay: Relay) -> None:
        super().__init__(identity, peer, ws)
        self._relay = relay

    @property
    def name(self) -> str:
        return self.identity.name

    async def on_open(self, request: IncomingChannel) -> None:
        """Tunnel `on_open` handler for the service's channels."""
        if request.kind == "rpc":
            await self._serve_rpc(request)
        elif request.kind == "bridge":
            await self._bridge(request)
        else:
            request.refuse(ErrorCode.REFUSED, "service channels are 'rpc' and 'bridge'")

    # -- rpc ----------------------------------------------------------------------------

    async def _serve_rpc(self, request: IncomingChannel) -> None:
        channel = request.accept()
        slots = asyncio.Semaphore(MAX_RPC_INFLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def answer(data: bytes) -> None:
            try:
                reply = await self._answer(data)
                await channel.send(reply)
            except ChannelError:
                pass  # the channel is gone; nobody to answer
            finally:
                slots.release()

        try:
            async for data in channel:
                await slots.acquire()
                task = asyncio.create_task(answer(data), name=f"rpc {self.name}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
            await channel.close()
        except ChannelError as exc:
            log.debug("= rpc channel ended: %s", exc)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _answer(self, data: bytes) -> bytes:
        stats = self._relay.stats
        request_id: RequestId | None = None
        op = "invalid"
        try:
            req = rpc.parse_request(data)
            request_id, op = req.id, type(req).__name__.lower()
            body = await self._dispatch(req)
        except MessageError as exc:
            stats.rpc[(op, exc.code)] += 1
            return encode_error(exc.request_id, exc.code, exc.message, **exc.extra)
        except Exception:
            stats.rpc[(op, ERR_INTERNAL)] += 1
            log.exception("! rpc %s failed", op)
            return encode_error(request_id, ERR_INTERNAL, "internal error")
        stats.rpc[(op, "ok")] += 1
        assert request_id is not None
        return encode_reply(request_id, **body)

    async def _dispatch(self, req: rpc.RpcRequest) -> dict[str, Any]:
        relay = self._relay
        agents = relay.registry.agents
        if isinstance(req, rpc.Presence):
            if req.device is not None:
                found = agents.get(req.device)
                links = [found] if found is not None else []
            else:
                ids = sorted(agents)[req.offset : req.offset + req.limit]
                links = [agents[i] for i in ids]
            return {
                "relay_id": relay.config.relay_id,
                "total": len(agents),
                "devices": [_presence_entry(link) for link in links],
            }
        if isinstance(req, rpc.Disconnect):
            agent = agents.get(req.device)
            if agent is None:
                return {"disconnected": False}
            log.info("= %s disconnects device %s", self.name, req.device)
            relay.tasks.spawn(
                agent.retire(req.retry_after_ms, "disconnected", relay.config.shutdown.grace),
                name=f"disconnect {req.device}",
            )
            return {"disconnected": True}
        if isinstance(req, rpc.Revoke):
            had = req.device is not None and req.device in agents
            await relay.revocation.reload()
            revoked = req.device is not None and req.device in relay.revocation.devices
            log.info("= %s asked for a revocation reload (device %s)", self.name, req.device)
            return {"revoked": revoked, "closed": had and revoked}
        agent = agents.get(req.device)
        if agent is None:
            raise MessageError(rpc.ERR_OFFLINE, "device not connected to this relay", req.id)
        try:
            async with asyncio.timeout(req.timeout):
                reply = await agent.instruct(req.instruction)
        except TimeoutError:
            raise MessageError(ERR_TIMEOUT, "the device did not answer in time", req.id) from None
        except AgentUnavailable:
            raise MessageError(rpc.ERR_OFFLINE, "device has no control channel", req.id) from None
        except MessageError as exc:
            raise MessageError(exc.code, exc.message, req.id) from None
        if not reply.ok:
            raise MessageError(
                rpc.ERR_AGENT_ERROR,
                str(reply.body.get("message", ""))[:256],
                req.id,
                agent_error=str(reply.error or "unknown")[:64],
            )
        return {"result": reply.body.get("result")}

    # -- bridge -------------------------------------------------------------------------

    async def _bridge(self, request: IncomingChannel) -> None:
        relay = self._relay
        stats = relay.stats
        try:
            bridge = rpc.parse_bridge(request.meta)
        except MessageError as exc:
            stats.bridges[("invalid", "bad_request")] += 1
            request.refuse(ErrorCode.BAD_REQUEST, exc.message)
            return
        kind = kind_label(bridge.kind)
        with logs.context(device=bridge.device, kind=bridge.kind):
            agent = relay.registry.agents.get(bridge.device)
            if agent is None or agent.tunnel is None:
                stats.bridges[(kind, "offline")] += 1
                log.info("! bridge for %s: device not connected", self.name)
                request.refuse(ErrorCode.UNAVAILABLE, "device not connected to this relay")
                return
            agent_channel = await self._open_on_agent(agent, bridge, request, kind)
            if agent_channel is None:
                return
            try:
                service_channel = request.accept(agent_channel.accept_meta)
            except ChannelError:  # the service gave up (or timed out) meanwhile
                stats.bridges[(kind, "cancelled")] += 1
                agent_channel.reset(ErrorCode.CANCELLED, "requester went away")
                return
            stats.bridges[(kind, "ok")] += 1
            stats.bridges_active += 1
            log.info("= bridge open for %s", self.name)
            try:
                await splice(service_channel, agent_channel)
            finally:
                stats.bridges_active -= 1
                log.info("= bridge closed")

    async def _open_on_agent(
        self, agent: AgentLink, bridge: rpc.Bridge, request: IncomingChannel, kind: str
    ) -> Any:
        """Open the agent side, or refuse the service's request and return None."""
        stats = self._relay.stats
        assert agent.tunnel is not None
        meta = {**bridge.meta, "requested_by": self.name}
        # Answer the service before its own accept timeout refuses on our behalf.
        deadline = self._relay.tunnel_settings.accept_timeout * 0.9
        try:
            async with asyncio.timeout(deadline):
                return await agent.tunnel.open_channel(bridge.kind, meta)
        except TimeoutError:
            stats.bridges[(kind, "timeout")] += 1
            request.refuse(ErrorCode.TIMEOUT, "device did not answer in time")
        except ChannelRefusedError as exc:
            stats.bridges[(kind, exc.code.name.lower())] += 1
            log.info("! bridge refused by device: %s", exc.code.name)
            request.refuse(exc.code, exc.reason)
        except (TunnelClosedError, ChannelResetError):
            stats.bridges[(kind, "offline")] += 1
            request.refuse(ErrorCode.UNAVAILABLE, "device disconnected")
        return None


def _presence_entry(link: AgentLink) -> dict[str, Any]:
    identity = link.identity
    return {
        "device_id": identity.device_id,
        "customer": identity.customer,
        "site": identity.site,
        "peer": link.peer,
        "connected_at": link.connected_at,
        "agent_version": link.agent_version,
    }
