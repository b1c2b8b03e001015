"""Forward one channel's data into another as it arrives: the relay's side of a splice.

``Forward(src, dst)`` switches ``src`` to chunk mode (``Connection.receive_in_chunks``)
and queues each DATA chunk on ``dst`` while the event is dispatched (``send_chunk``):
no reassembly, no task switch, no copy beyond framing. Credit for a chunk goes back to
``src``'s sender only once ``dst``'s writer has framed it -- that is, once ``dst``'s
receiver had granted credit for it -- so the relay holds at most ``src``'s receive
window per direction and a slow reader slows the far sender (end-to-end flow control).
The receiver's ``max_message`` is enforced by ``send_chunk`` counting the message in
flight. ``src``'s EOF becomes ``dst``'s EOF; a failure of either side ends the forward
with that side's error (the caller decides what to tell the other side).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import LocalProtocolError
from .exceptions import ChannelError, ChannelResetError

if TYPE_CHECKING:
    from .channel import Channel

logger = logging.getLogger(__name__)


class Forward:
    """``src`` -> ``dst``, from construction until ``src``'s EOF or a failure.

    Neither channel may be used for ``recv()`` (``src``) or ``send()`` (``dst``)
    meanwhile; the other direction of each stays free (a splice runs two forwards).
    """

    __slots__ = ("_done", "_pending", "dst", "passed", "src")

    def __init__(self, src: Channel, dst: Channel) -> None:
        if src._forward_out is not None or dst._forward_in is not None:
            raise RuntimeError(f"{src!r} or {dst!r} is already forwarded")
        self.src = src
        self.dst = dst
        self.passed = 0
        """Bytes handed to ``dst`` so far."""
        self._pending = 0  # of those, not yet framed by dst's writer (src credit withheld)
        self._done: asyncio.Future[int] = src._tunnel._loop.create_future()
        error = src._error or dst._error
        if error is not None:
            self._fail(error)
            return
        try:
            parts = src._tunnel._conn.receive_in_chunks(src.id)
        except LocalProtocolError as exc:
            self._fail(ChannelResetError(exc.code, "channel gone", remote=False))
            return
        src._forward_out = self
        dst._forward_in = self
        dst._tunnel._add_forward(self)
        for message in src._take_inbox():  # reported whole before the switch
            self._chunk(message, False)
        for part in parts:  # the message that was being reassembled
            self._chunk(part, True)
        if src._eof:
            self._eof()

    def __repr__(self) -> str:
        return f"<Forward {self.src!r} -> {self.dst!r}>"

    async def wait(self) -> int:
        """Until ``src``'s EOF was passed on (returns :attr:`passed`); raises the
        :class:`ChannelError` that ended it otherwise."""
        return await self._done

    # -- driven by the tunnels' dispatchers and writers (never awaits) ----------------

    def _chunk(self, data: bytes | memoryview, more: bool) -> None:
        dst = self.dst
        try:
            dst._tunnel._conn.send_chunk(dst.id, data, more)
        except LocalProtocolError as exc:  # the receiver's max_message, or dst ended
            self._fail(ChannelResetError(exc.code, "cannot forward", remote=False))
            return
        size = len(data)
        self._pending += size
        self.passed += size
        dst._tunnel._kick()

    def _framed(self) -> None:
        """``dst``'s writer framed data: give ``src``'s sender credit for it."""
        dst = self.dst
        queued = dst._tunnel._conn.channel_queued(dst.id)
        framed = self._pending - queued
        if framed > 0:
            self._pending = queued
            self.src._tunnel._consumed(self.src.id, framed)

    def _eof(self) -> None:
        logger.debug("= %r: EOF passed on", self)
        self._detach()
        self.dst._close_now()
        if not self._done.done():
            self._done.set_result(self.passed)

    def _fail(self, error: ChannelError) -> None:
        self._detach()
        done = self._done
        if not done.done():
            done.set_exception(error)
            done.exception()  # retrieved: nobody may be waiting any more

    def _detach(self) -> None:
        if self.src._forward_out is self:
            self.src._forward_out = None
        if self.dst._forward_in is self:
            self.dst._forward_in = None
        self.dst._tunnel._remove_forward(self)
