"""Splice two tunnel channels together: two forwards passing data, EOF and errors.

Each direction is a :class:`tunnel.aio.Forward`: DATA chunks are queued on the other
channel as they arrive, without reassembling messages, and credit goes back to their
sender only once the other channel has framed them (its receiver granted the credit).
So a slow reader on one side stops credit at the far end: the relay holds at most one
receive window per direction, whatever the speeds, and enforces the receiver's
max_message on the message in flight. EOF (half-close) is passed on as EOF; a reset or
a lost tunnel on one side resets the other with the same code, so neither end waits for
data that cannot come.
"""

from __future__ import annotations

import asyncio
import logging

from tunnel import ErrorCode
from tunnel.aio import Channel, ChannelError, ChannelResetError, Forward, TunnelClosedError

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
    forward = Forward(src, dst)
    try:
        await forward.wait()
    except ChannelError as exc:
        code, reason = _propagated(exc)
        log.debug("! %r <-> %r: %s, resetting both", src, dst, exc)
        dst.reset(code, reason)
        src.reset(code, reason)
    return forward.passed


def _propagated(exc: ChannelError) -> tuple[ErrorCode, str]:
    """What the other side is told when one side fails."""
    if isinstance(exc, TunnelClosedError):
        return ErrorCode.UNAVAILABLE, "the other end disconnected"
    if isinstance(exc, ChannelResetError) and exc.remote:
        return exc.code, exc.reason
    return exc.code, "the other end failed"
