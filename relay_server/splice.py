"""Splice two tunnel channels together: a pair of pumps passing data, EOF and errors.

Each direction is one loop: take a message from one channel (which returns credit
to its sender only now), then wait until the other channel accepts it (`send` waits
while that channel's backlog is above its high-water mark). So a slow reader on one
side stops the pump, stops credit, and stops the sender at the far end: the relay
holds at most one receive window plus one send backlog per direction, whatever the
speeds. EOF (half-close) is passed on as EOF; a reset or a lost tunnel on one side
resets the other with the same code, so neither end waits for data that cannot come.
"""

from __future__ import annotations

import asyncio
import logging

from tunnel import ErrorCode
from tunnel.aio import Channel, ChannelError, ChannelResetError, TunnelClosedError

log = logging.getLogger(__name__)


async def splice(a: Channel, b: Channel) -> tuple[int, int]:
    """Pump `a` -> `b` and `b` -> `a` until both directions ended; return the bytes
    passed each way. Never raises ChannelError; cancelling it resets both channels."""
    try:
        a_to_b, b_to_a = await asyncio.gather(_pump(a, b), _pump(b, a))
        return a_to_b, b_to_a
    except asyncio.CancelledError:
        a.reset(ErrorCode.CANCELLED, "relay stopped the bridge")
        b.reset(ErrorCode.CANCELLED, "relay stopped the bridge")
        raise


async def _pump(src: Channel, dst: Channel) -> int:
    passed = 0
    try:
        while True:
            try:
                data = await src.recv()
            except EOFError:
                await dst.close()
                log.debug("= %r -> %r: EOF passed on", src, dst)
                return passed
            await dst.send(data)
            passed += len(data)
    except ChannelError as exc:
        code, reason = _propagated(exc)
        log.debug("! %r <-> %r: %s, resetting both", src, dst, exc)
        dst.reset(code, reason)
        src.reset(code, reason)
    return passed


def _propagated(exc: ChannelError) -> tuple[ErrorCode, str]:
    """What the other side is told when one side fails."""
    if isinstance(exc, TunnelClosedError):
        return ErrorCode.UNAVAILABLE, "the other end disconnected"
    if isinstance(exc, ChannelResetError) and exc.remote:
        return exc.code, exc.reason
    return exc.code, "the other end failed"
