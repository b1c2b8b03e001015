"""The agent's end of the control channel, and the registry of what the relay may ask.

The agent opens the ``control`` channel right after the tunnel is up (so the
relay is already authenticated by the pinned CA and hostname: R24, R27). On it:

* the agent sends requests (``hello``, ``renew``) and awaits the replies;
* the agent sends events (``{"id": 9, "op": "event", "name": "desktop.state", ...}``)
  through `Registry.send_event`: facts for the relay to record, no reply expected
  (the id is there because every envelope request carries one);
* the relay sends ``instruct`` requests; each names an *action*, and the agent
  runs the handler registered for that action, or answers ``unknown_action``.

Nothing else makes the agent act: relay-opened channels go to handlers
registered per channel *kind* (unknown kinds are refused), and no other input
exists (the agent has no listening socket: R19).

Later features register here, e.g.::

    registry = Registry()

    @registry.action("collect_logs")
    async def collect_logs(instruction: dict[str, Any]) -> dict[str, Any]:
        ...
        return {"files": 3}

    @registry.channel("desktop")
    async def desktop(request: IncomingChannel) -> None:
        channel = request.accept(meta={})
        ...

The message schema is shared with the relay (`protocol.control`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from protocol.control import MAX_MESSAGE, Hello, Instruct, Renew, parse
from protocol.envelope import (
    ERR_BUSY,
    ERR_INTERNAL,
    ERR_TIMEOUT,
    ERR_TOO_LARGE,
    ERR_UNKNOWN_OP,
    MessageError,
    Reply,
    RequestId,
    encode_error,
    encode_reply,
    encode_request,
)
from tunnel.errors import TunnelError

if TYPE_CHECKING:
    from tunnel.aio import Channel, IncomingChannel

logger = logging.getLogger(__name__)

ERR_UNKNOWN_ACTION = "unknown_action"
# Instructions run concurrently (one may wait on the device); more than this at once
# is answered "busy" so a flood cannot pile up tasks.
MAX_CONCURRENT_INSTRUCTIONS = 8
# A handler that has not answered by then is cancelled; the relay gets "timeout".
INSTRUCTION_TIMEOUT = 600.0
# How long the agent waits for the relay to answer one of its requests.
REQUEST_TIMEOUT = 30.0

InstructionHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
ChannelHandler = Callable[["IncomingChannel"], Awaitable[None]]
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


class InstructionError(Exception):
    """Raise from an action handler to answer ``ok: false``.

    `code` is a short stable string; `message` is sent to the relay, so it must
    be written for a human and never carry exception text.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ControlRefused(Exception):
    """The relay answered one of our requests with ``ok: false``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Registry:
    """Instruction actions and channel kinds the agent serves. Register before `run`."""

    def __init__(self) -> None:
        self.actions: dict[str, InstructionHandler] = {}
        self.channels: dict[str, ChannelHandler] = {}
        # The control channel of the link that is up, if any (set by ControlChannel.run).
        self.control: ControlChannel | None = None
        #: Told ``(what, name)`` when the relay asks for an action or channel kind that is
        #: not served ("instruction" / "channel"), so the local audit records the refusal.
        self.on_unknown: Callable[[str, str], None] = lambda what, name: None
        #: Run once per link, after the relay answered ``hello``: features announce what
        #: the relay should know about this device (e.g. ``desktop.policy``) as events.
        self.on_link: list[Callable[[], Coroutine[Any, Any, None]]] = []

    async def send_event(self, name: str, **fields: Any) -> bool:
        """Send an event on the current link's control channel. False when no link is up
        or it failed while sending: events are not queued for a later link."""
        control = self.control
        if control is None:
            return False
        return await control.send_event(name, **fields)

    def add_action(self, name: str, handler: InstructionHandler) -> None:
        if name in self.actions:
            raise ValueError(f"action {name!r} already registered")
        self.actions[name] = handler

    def add_channel(self, kind: str, handler: ChannelHandler) -> None:
        if kind == "control" or kind in self.channels:
            raise ValueError(f"channel kind {kind!r} already registered or reserved")
        self.channels[kind] = handler

    def action(self, name: str) -> Callable[[H], H]:
        """Decorator form of `add_action`."""

        def register(handler: H) -> H:
            self.add_action(name, handler)
            return handler

        return register

    def channel(self, kind: str) -> Callable[[H], H]:
        """Decorator form of `add_channel`."""

        def register(handler: H) -> H:
            self.add_channel(kind, handler)
            return handler

        return register

    @property
    def capabilities(self) -> list[str]:
        """What `hello` announces: ``channel:<kind>`` and ``action:<name>``, sorted."""
        names = [f"channel:{k}" for k in self.channels] + [f"action:{a}" for a in self.actions]
        return sorted(names)


class ControlChannel:
    """Requests out, instructions in, over one tunnel channel. Call `run()` in a task."""

    def __init__(
        self,
        channel: Channel,
        registry: Registry,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        instruction_timeout: float = INSTRUCTION_TIMEOUT,
    ) -> None:
        self._channel = channel
        self._registry = registry
        self._request_timeout = request_timeout
        self._instruction_timeout = instruction_timeout
        self._ids = itertools.count(1)
        self._pending: dict[RequestId, asyncio.Future[Reply]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request and return the reply body; raises ControlRefused or TimeoutError."""
        request_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            logger.debug("> control %s id=%s", op, request_id)
            await self._channel.send(encode_request(request_id, op, **fields))
            async with asyncio.timeout(self._request_timeout):
                reply = await future
        finally:
            self._pending.pop(request_id, None)
        if not reply.ok:
            message = reply.body.get("message")
            raise ControlRefused(
                reply.error or "error", message if isinstance(message, str) else ""
            )
        return reply.body

    async def send_event(self, name: str, **fields: Any) -> bool:
        """Send ``{"id", "op": "event", "name", **fields}``; no reply is awaited. False if
        the channel failed."""
        if {"id", "op", "name"} & fields.keys():
            raise ValueError("event fields must not be named id, op or name")
        event_id = next(self._ids)
        logger.debug("> control event %s id=%s", name, event_id)
        try:
            await self._channel.send(encode_request(event_id, "event", name=name, **fields))
        except TunnelError as exc:
            logger.debug("! control event %s not sent: %s", name, type(exc).__name__)
            return False
        return True

    async def run(self) -> None:
        """Read until the relay half-closes the channel; then fail what is still pending.
        While it runs, `Registry.send_event` goes through this channel."""
        self._registry.control = self
        try:
            async for data in self._channel:
                await self._dispatch(data)
        finally:
            if self._registry.control is self:
                self._registry.control = None
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("control channel closed"))
            for task in self._tasks:
                task.cancel()

    async def _dispatch(self, data: bytes) -> None:
        try:
            msg = parse(data)
        except MessageError as exc:
            logger.warning("! control message refused: %s", exc.code)
            # Answer only what had a usable id: an unanswerable message may itself be an
            # error reply ("id": null), and answering those would ping-pong forever.
            if exc.request_id is not None:
                await self._send(encode_error(exc.request_id, exc.code, exc.message))
            return
        if isinstance(msg, Reply):
            future = self._pending.get(msg.id)
            if future is None or future.done():
                logger.warning("! control reply for unknown request id=%r dropped", msg.id)
            else:
                logger.debug("< control reply id=%s ok=%s", msg.id, msg.ok)
                future.set_result(msg)
        elif isinstance(msg, Instruct):
            if len(self._tasks) >= MAX_CONCURRENT_INSTRUCTIONS:
                await self._send(encode_error(msg.id, ERR_BUSY, "too many instructions at once"))
            else:
                self._spawn(self._instruct(msg), f"instruct-{msg.id}")
        elif isinstance(msg, Hello | Renew):
            # Requests the relay serves, not the agent.
            await self._send(encode_error(msg.id, ERR_UNKNOWN_OP, "unknown op"))

    async def _instruct(self, msg: Instruct) -> None:
        action = msg.instruction["action"]
        handler = self._registry.actions.get(action)
        if handler is None:
            logger.warning("! instruction %r unknown; refused", action)
            self._registry.on_unknown("instruction", str(action))
            await self._send(encode_error(msg.id, ERR_UNKNOWN_ACTION, "unknown action"))
            return
        logger.info("< instruction %s id=%s", action, msg.id)
        try:
            async with asyncio.timeout(self._instruction_timeout):
                result = await handler(msg.instruction)
            reply = encode_reply(msg.id, result=result or {})
        except InstructionError as exc:
            reply = encode_error(msg.id, exc.code, exc.message)
        except TimeoutError:
            reply = encode_error(msg.id, ERR_TIMEOUT, "instruction timed out")
        except (TypeError, ValueError):
            logger.exception("! instruction %s returned a result that is not JSON", action)
            reply = encode_error(msg.id, ERR_INTERNAL, "instruction failed")
        except Exception:
            logger.exception("! instruction %s failed", action)
            reply = encode_error(msg.id, ERR_INTERNAL, "instruction failed")
        if len(reply) > MAX_MESSAGE:
            reply = encode_error(msg.id, ERR_TOO_LARGE, f"result exceeds {MAX_MESSAGE} bytes")
        logger.debug("> instruction %s id=%s answered (%d bytes)", action, msg.id, len(reply))
        await self._send(reply)

    async def _send(self, data: bytes) -> None:
        try:
            await self._channel.send(data)
        except TunnelError as exc:
            # The tunnel is going down; the relay will not read the answer anyway.
            logger.debug("! control send failed: %s", type(exc).__name__)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
