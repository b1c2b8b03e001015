"""The relay's side of the portal <-> relay contract: `/service` rpc and bridge channels.

A service client (the portal, tests, benchmarks) connects to `/service` with a
service certificate and speaks the tunnel protocol. It opens:

* ``rpc`` channels: JSON requests (`protocol.rpc`), answered concurrently (at most
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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection

import jsonlog
from pki.identity import ServiceIdentity
from protocol import rpc
from protocol.envelope import (
    ERR_INTERNAL,
    ERR_TIMEOUT,
    MessageError,
    RequestId,
    encode_error,
    encode_reply,
)
from relay_server.agent_link import AgentLink, AgentUnavailable
from relay_server.links import Link
from relay_server.metrics import kind_label
from relay_server.splice import splice
from tunnel import ErrorCode, priority_for_kind
from tunnel.aio import (
    Channel,
    ChannelError,
    ChannelRefusedError,
    ChannelResetError,
    IncomingChannel,
    TunnelClosedError,
)

if TYPE_CHECKING:
    from relay_server.audit import AuditLog
    from relay_server.metrics import RelayStats
    from relay_server.revocation import RevocationCache
    from relay_server.tasks import TaskSet

log = logging.getLogger(__name__)

# Concurrent requests per rpc channel. An `instruct` may wait for a device for up to
# MAX_INSTRUCT_TIMEOUT; this many can wait at once before the relay stops reading.
MAX_RPC_INFLIGHT = 32


@dataclass(frozen=True)
class ServiceContext:
    """What every service link needs from the relay (one shared instance)."""

    relay_id: str
    agents: Mapping[str, AgentLink]
    stats: RelayStats
    audit: AuditLog
    tasks: TaskSet
    revocation: RevocationCache
    retire_grace: float  # a `disconnect` gives the agent this long to leave by itself
    accept_timeout: float  # the tunnel's: a bridge answers the service within 90 % of it


class ServiceLink(Link):
    """A service client with an open tunnel on this relay."""

    __slots__ = ("_context",)

    identity: ServiceIdentity

    def __init__(
        self, identity: ServiceIdentity, peer: str, ws: ServerConnection, context: ServiceContext
    ) -> None:
        super().__init__(identity, peer, ws)
        self._context = context

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
        stats = self._context.stats
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
        context = self._context
        agents = context.agents
        if isinstance(req, rpc.Presence):
            if req.device is not None:
                found = agents.get(req.device)
                links = [found] if found is not None else []
            else:
                ids = sorted(agents)[req.offset : req.offset + req.limit]
                links = [agents[i] for i in ids]
            return {
                "relay_id": context.relay_id,
                "total": len(agents),
                "devices": [_presence_entry(link) for link in links],
            }
        if isinstance(req, rpc.Disconnect):
            agent = agents.get(req.device)
            if agent is None:
                return {"disconnected": False}
            log.info("= %s disconnects device %s", self.name, req.device)
            context.audit.record(
                "relay.device_disconnected",
                f"tunnel closed at the request of {self.name}",
                device_id=req.device,
                source=self.peer,
                requested_by=self.name,
                retry_after_ms=req.retry_after_ms,
            )
            context.tasks.spawn(
                agent.retire(req.retry_after_ms, "disconnected", context.retire_grace),
                name=f"disconnect {req.device}",
            )
            return {"disconnected": True}
        if isinstance(req, rpc.Revoke):
            had = req.device is not None and req.device in agents
            await context.revocation.reload()
            revoked = req.device is not None and req.device in context.revocation.devices
            log.info("= %s asked for a revocation reload (device %s)", self.name, req.device)
            return {"revoked": revoked, "closed": had and revoked}
        return await self._instruct(req)

    async def _instruct(self, req: rpc.Instruct) -> dict[str, Any]:
        action = str(req.instruction.get("action"))[:64]
        try:
            result = await self._deliver(req)
        except MessageError as exc:
            self._audit_instruct(req, action, "failure", error=exc.code)
            raise
        self._audit_instruct(req, action, "success")
        return result

    def _audit_instruct(self, req: rpc.Instruct, action: str, outcome: str, **details: str) -> None:
        self._context.audit.record(
            "relay.instruct",
            f"instruction {action!r} from {self.name}",
            outcome=outcome,
            device_id=req.device,
            source=self.peer,
            action=action,
            requested_by=self.name,
            **details,
        )

    async def _deliver(self, req: rpc.Instruct) -> dict[str, Any]:
        agent = self._context.agents.get(req.device)
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
        try:
            bridge = rpc.parse_bridge(request.meta)
        except MessageError as exc:
            self._context.stats.bridges[("invalid", "bad_request")] += 1
            request.refuse(ErrorCode.BAD_REQUEST, exc.message)
            return
        with jsonlog.context(device=bridge.device, kind=bridge.kind):
            agent_channel = await self._open_on_agent(bridge, request)
            if agent_channel is None:
                return
            try:
                # The service side schedules like the bridged kind, not like "bridge".
                service_channel = request.accept(
                    agent_channel.accept_meta, priority=priority_for_kind(bridge.kind)
                )
            except ChannelError:  # the service gave up (or timed out) meanwhile
                self._bridge_refused(bridge, "cancelled", "requester went away")
                agent_channel.reset(ErrorCode.CANCELLED, "requester went away")
                return
            await self._run_bridge(bridge, service_channel, agent_channel)

    async def _open_on_agent(self, bridge: rpc.Bridge, request: IncomingChannel) -> Any:
        """Open the agent side, or refuse the service's request and return None."""
        agent = self._context.agents.get(bridge.device)
        code, reason = ErrorCode.UNAVAILABLE, "device not connected to this relay"
        if agent is not None and agent.tunnel is not None:
            meta = {**bridge.meta, "requested_by": self.name}
            # Answer the service before its own accept timeout refuses on our behalf.
            deadline = self._context.accept_timeout * 0.9
            try:
                async with asyncio.timeout(deadline):
                    return await agent.tunnel.open_channel(bridge.kind, meta)
            except TimeoutError:
                code, reason = ErrorCode.TIMEOUT, "device did not answer in time"
            except ChannelRefusedError as exc:
                code, reason = exc.code, exc.reason
            except (TunnelClosedError, ChannelResetError):
                reason = "device disconnected"
        outcome = "offline" if code is ErrorCode.UNAVAILABLE else code.name.lower()
        self._bridge_refused(bridge, outcome, reason)
        request.refuse(code, reason)
        return None

    async def _run_bridge(self, bridge: rpc.Bridge, service: Channel, agent: Channel) -> None:
        stats = self._context.stats
        stats.bridges[(kind_label(bridge.kind), "ok")] += 1
        stats.bridges_active += 1
        log.info("= bridge open for %s", self.name)
        self._audit_bridge(bridge, "relay.bridge_opened", "success", f"{bridge.kind} bridge opened")
        started = time.monotonic()
        to_device = from_device = 0
        try:
            to_device, from_device = await splice(service, agent)
        finally:
            stats.bridges_active -= 1
            log.info("= bridge closed")
            self._audit_bridge(
                bridge,
                "relay.bridge_closed",
                "success",
                f"{bridge.kind} bridge closed",
                seconds=round(time.monotonic() - started, 3),
                bytes_to_device=to_device,
                bytes_from_device=from_device,
            )

    def _bridge_refused(self, bridge: rpc.Bridge, outcome: str, reason: str) -> None:
        self._context.stats.bridges[(kind_label(bridge.kind), outcome)] += 1
        log.info("! bridge for %s refused: %s", self.name, outcome)
        self._audit_bridge(
            bridge,
            "relay.bridge_refused",
            "failure",
            f"{bridge.kind} bridge refused: {outcome}",
            reason=reason,
        )

    def _audit_bridge(
        self, bridge: rpc.Bridge, kind: str, outcome: str, summary: str, **details: Any
    ) -> None:
        self._context.audit.record(
            kind,
            f"{summary} for {self.name}",
            outcome=outcome,
            device_id=bridge.device,
            source=self.peer,
            channel_kind=bridge.kind,
            requested_by=self.name,
            **details,
        )


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
