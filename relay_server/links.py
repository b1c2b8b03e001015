"""One authenticated tunnel as the relay sees it: identity, peer, tunnel, WebSocket.

`AgentLink` (a device) and `ServiceLink` (a service client, see `service_api`) share
this base. A link exists from the moment the WebSocket handshake succeeded until
its tunnel closed; the registry indexes them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode

from pki.identity import Identity
from tunnel import ErrorCode

if TYPE_CHECKING:
    from tunnel.aio import Tunnel

log = logging.getLogger(__name__)


class Link:
    """Base of agent and service links. Uses __slots__: 10,000 of these must be cheap."""

    __slots__ = ("identity", "peer", "tunnel", "ws")

    def __init__(self, identity: Identity, peer: str, ws: ServerConnection) -> None:
        self.identity = identity
        self.peer = peer
        self.ws = ws
        self.tunnel: Tunnel | None = None

    @property
    def serial(self) -> str:
        return self.identity.serial

    def write_buffer_size(self) -> int:
        transport = self.ws.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def close(self, code: ErrorCode, reason: str) -> None:
        """Final GOAWAY with `code`, then close. Safe to call at any time, repeatedly."""
        if self.tunnel is not None:
            await self.tunnel.close(code, reason)
        else:  # the tunnel was not created yet: close the WebSocket itself
            await self.ws.close()

    async def retire(self, retry_after_ms: int, reason: str, grace: float) -> None:
        """GOAWAY asking the peer to come back after `retry_after_ms`, give it `grace`
        seconds to leave by itself, then close. Used by shutdown and `disconnect`."""
        tunnel = self.tunnel
        if tunnel is None:
            await self.ws.close(CloseCode.GOING_AWAY)
            return
        if not tunnel.closing:
            await tunnel.go_away(ErrorCode.GOING_AWAY, retry_after_ms, reason)
        try:
            async with asyncio.timeout(grace):
                await tunnel.closed.wait()
        except TimeoutError:
            # Close the WebSocket under the tunnel, not `tunnel.close()`: that would send
            # a final GOAWAY with retry_after 0, and the peer keeps the LAST GOAWAY as
            # its reconnect hint. The tunnel sees the close and ends by itself.
            await self.ws.close(CloseCode.GOING_AWAY, reason)
            await tunnel.closed.wait()


def jittered_retry_ms(low: int, high: int) -> int:
    """A retry delay spread uniformly in [low, high] so agents do not return in lockstep."""
    return random.randint(low, high)  # noqa: S311 - spreading load, not a secret
