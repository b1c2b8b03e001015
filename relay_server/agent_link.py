"""One connected agent: its identity, its tunnel, and its control channel.

The agent opens a ``control`` channel right after connecting (schema in
`protocol.control`). The relay answers ``hello`` and ``renew`` and sends
``instruct`` requests when a service asks, matching the agent's replies by id.
The agent's identity is always the verified peer certificate's, never the message's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine
from websockets.asyncio.server import ServerConnection

from pki.ca import CertificateAuthority
from pki.identity import DeviceIdentity
from pki.renewal import renew
from pki.wire import Refused
from protocol import control
from protocol.envelope import (
    ERR_BUSY,
    ERR_INTERNAL,
    MessageError,
    Reply,
    RequestId,
    encode_error,
    encode_reply,
    encode_request,
)
from relay_server.links import Link
from store.db import session_scope
from tunnel import ErrorCode
from tunnel.aio import Channel, ChannelError, IncomingChannel

if TYPE_CHECKING:
    from relay_server.audit import AuditLog
    from relay_server.metrics import RelayStats
    from relay_server.presence import PresenceWriter

log = logging.getLogger(__name__)

# Instructions the relay may have outstanding on one agent; a service asking for more
# at once gets "busy" rather than queueing without bound.
MAX_PENDING_INSTRUCTIONS = 16


#: Serves one agent-opened channel of a kind the relay's features handle (telemetry, logs).
AgentChannelHandler = Callable[["AgentLink", IncomingChannel], Awaitable[None]]
#: Takes one agent event's fields (e.g. ``desktop.state``); must not block: queue, return.
AgentEventHandler = Callable[["AgentLink", dict[str, Any]], None]


class AgentUnavailable(Exception):
    """The agent has no control channel (yet, or any more)."""


@dataclass(frozen=True)
class ControlContext:
    """What every agent's control session needs from the relay (one shared instance)."""

    relay_id: str
    engine: Engine
    presence: PresenceWriter
    stats: RelayStats
    audit: AuditLog
    ca: CertificateAuthority | None  # None: this relay does not sign renewals
    # Agent-opened channel kinds other than control, by kind; features add theirs at startup.
    channels: dict[str, AgentChannelHandler] = field(default_factory=dict)
    # Agent events by name (no reply is sent); features add theirs at startup.
    events: dict[str, AgentEventHandler] = field(default_factory=dict)


class AgentLink(Link):
    """A device with an open tunnel on this relay."""

    __slots__ = (
        "_context",
        "_last_renew",
        "_next_id",
        "_pending",
        "agent_version",
        "capabilities",
        "connected_at",
        "control",
    )

    identity: DeviceIdentity

    def __init__(
        self, identity: DeviceIdentity, peer: str, ws: ServerConnection, context: ControlContext
    ) -> None:
        super().__init__(identity, peer, ws)
        self._context = context
        self.connected_at = time.time()
        self.agent_version: str | None = None
        self.capabilities: tuple[str, ...] = ()
        self.control: Channel | None = None
        self._pending: dict[RequestId, asyncio.Future[Reply]] | None = None  # made on first use
        self._next_id = 1
        self._last_renew = float("-inf")

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    # -- incoming channels -----------------------------------------------------------

    async def on_open(self, request: IncomingChannel) -> None:
        """Tunnel `on_open` handler: control here, other kinds by `ControlContext.channels`."""
        if request.kind != "control":
            handler = self._context.channels.get(request.kind)
            if handler is None:
                request.refuse(ErrorCode.REFUSED, "channel kind not served by the relay")
                return
            await handler(self, request)
            return
        if self.control is not None:
            request.refuse(ErrorCode.BAD_REQUEST, "a control channel is already open")
            return
        channel = request.accept()
        self.control = channel
        log.debug("= control channel open")
        try:
            async for data in channel:
                answer = await self._answer(data)
                if answer is not None:
                    await channel.send(answer)
            await channel.close()
        except ChannelError as exc:
            log.debug("= control channel ended: %s", exc)
        finally:
            self.control = None
            self._fail_pending()

    async def _answer(self, data: bytes) -> bytes | None:
        stats = self._context.stats
        try:
            msg = control.parse(data)
        except MessageError as exc:
            stats.control[("invalid", exc.code)] += 1
            log.info("! bad control message: %s", exc.code)
            return encode_error(exc.request_id, exc.code, exc.message)
        if isinstance(msg, Reply):
            self._resolve(msg)
            return None
        if isinstance(msg, control.Hello):
            self.agent_version = msg.version
            self.capabilities = msg.capabilities
            self._context.presence.agent_version(self.device_id, msg.version)
            stats.control[("hello", "ok")] += 1
            log.info("< hello version=%s capabilities=%s", msg.version, ",".join(msg.capabilities))
            return encode_reply(msg.id, relay_id=self._context.relay_id, time=time.time())
        if isinstance(msg, control.Renew):
            return await self._renew(msg)
        if isinstance(msg, control.Event):
            handler = self._context.events.get(msg.name)
            stats.control[("event", "ok" if handler is not None else "unknown_event")] += 1
            if handler is None:
                log.info("! unknown event %r dropped", msg.name)
            else:
                handler(self, msg.fields)
            return None
        # An agent never instructs the relay.
        stats.control[("instruct", "unknown_op")] += 1
        return encode_error(msg.id, "unknown_op", "agents cannot send instructions")

    async def _renew(self, msg: control.Renew) -> bytes:
        stats = self._context.stats
        ca = self._context.ca
        if ca is None:
            stats.control[("renew", control.ERR_UNAVAILABLE)] += 1
            return encode_error(msg.id, control.ERR_UNAVAILABLE, "this relay does not renew")
        now = time.monotonic()
        if now - self._last_renew < control.RENEW_INTERVAL:
            stats.control[("renew", ERR_BUSY)] += 1
            return encode_error(msg.id, ERR_BUSY, "one renewal per minute")
        self._last_renew = now
        try:
            cert = await asyncio.to_thread(
                self._sign, self._context.engine, ca, msg.csr.encode("ascii", "replace")
            )
        except Refused as refusal:
            stats.control[("renew", refusal.code)] += 1
            log.info("! renewal refused: %s", refusal.code)
            self._audit_renewal("failure", error=refusal.code)
            return encode_error(msg.id, refusal.code, refusal.message)
        except Exception:
            stats.control[("renew", ERR_INTERNAL)] += 1
            log.exception("! renewal failed")
            return encode_error(msg.id, ERR_INTERNAL, "renewal failed; try later")
        stats.control[("renew", "ok")] += 1
        self._audit_renewal("success")
        return encode_reply(
            msg.id,
            device_id=self.device_id,
            certificate=cert.decode("ascii"),
            ca_certificate=ca.cert_pem.decode("ascii"),
        )

    def _audit_renewal(self, outcome: str, **details: str) -> None:
        self._context.audit.record(
            "relay.certificate_renewal",
            "certificate renewal over the tunnel",
            outcome=outcome,
            device_id=self.device_id,
            source=self.peer,
            serial=self.serial,
            **details,
        )

    def _sign(self, engine: Engine, ca: CertificateAuthority, csr_pem: bytes) -> bytes:
        """Worker thread: issue from the *peer certificate's* identity and the database."""
        with session_scope(engine) as session:
            cert = renew(session, ca, self.identity, csr_pem)
        return cert.public_bytes(serialization.Encoding.PEM)

    # -- instructions -----------------------------------------------------------------

    async def instruct(self, instruction: dict[str, object]) -> Reply:
        """Send an instruction on the control channel and wait for the agent's reply.

        Callers bound the wait with `asyncio.timeout`. Raises AgentUnavailable (no
        control channel, or it closed while waiting) or MessageError (busy).
        """
        channel = self.control
        if channel is None:
            raise AgentUnavailable
        if self._pending is None:
            self._pending = {}
        if len(self._pending) >= MAX_PENDING_INSTRUCTIONS:
            raise MessageError(ERR_BUSY, "too many instructions outstanding for this device")
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            log.info("> instruct %s action=%s", request_id, instruction.get("action"))
            await channel.send(encode_request(request_id, "instruct", instruction=instruction))
            return await future
        except ChannelError:
            raise AgentUnavailable from None
        finally:
            if self._pending is not None:
                self._pending.pop(request_id, None)

    def _resolve(self, reply: Reply) -> None:
        future = self._pending.get(reply.id) if self._pending else None
        if future is None or future.done():
            log.info("! reply to unknown or expired instruction %r", reply.id)
            return
        future.set_result(reply)

    def _fail_pending(self) -> None:
        if not self._pending:
            return
        for future in self._pending.values():
            if not future.done():
                future.set_exception(AgentUnavailable())
                future.exception()  # retrieved: the waiter may have timed out already
        self._pending = None
