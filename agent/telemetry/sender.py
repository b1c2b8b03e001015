"""The ``telemetry`` channel, agent side: spooled records out, acknowledgements in.

While the tunnel is up the sender keeps one ``telemetry`` channel open. On `flush()`
(the schedule, an urgent code, a reconnect) it sends everything spooled, oldest first,
in batches of at most the relay's ``max_records`` and BATCH_BYTES, with at most WINDOW
batches awaiting their ack. An ack (or a refusal, which resending cannot cure) deletes
that batch from the spool. When the channel or the tunnel fails, unacknowledged
records simply stay spooled and the next channel sends them again from the oldest:
the relay stores each (device, seq) once, so a resend is never a duplicate.

Codec and limits: `telemetry.codec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from agent.audit import AuditLog
from agent.telemetry.spool import Spool
from telemetry.codec import (
    MAX_BATCH_RECORDS,
    VERSION,
    Ack,
    CodecError,
    encode_batch,
    parse_reply,
)
from tunnel import Priority
from tunnel.aio import Channel, Tunnel
from tunnel.errors import TunnelError

log = logging.getLogger(__name__)

#: Batches in flight: enough to keep a backlog moving at line rate after an outage,
#: few enough that a lost channel resends little.
WINDOW = 4
#: A batch's record bytes; the relay accepts 256 KiB messages.
BATCH_BYTES = 64 * 1024
#: After a failed channel, wait this long before trying again (doubling, capped):
#: a relay without telemetry refuses the channel, and must not be asked in a loop.
RETRY_MIN = 1.0
RETRY_MAX = 300.0
#: Message sizes remembered for the size distribution.
SIZE_HISTORY = 1000


class Sender:
    """Drains `spool` over telemetry channels of whatever tunnel `tunnel()` returns while
    `connected` is set. Run `run()` in a task; cancel it to stop."""

    def __init__(
        self,
        spool: Spool,
        *,
        tunnel: Callable[[], Tunnel | None],
        connected: asyncio.Event,
        audit: AuditLog | None = None,
        batch_records: int = 200,
    ) -> None:
        self._spool = spool
        self._tunnel = tunnel
        self._connected = connected
        self._audit = audit
        self._batch_records = min(batch_records, MAX_BATCH_RECORDS)
        self._flush = asyncio.Event()
        self.channel_up = asyncio.Event()
        #: Called each time a telemetry channel opens: a (new) link is usable.
        self.on_up: Callable[[], None] | None = None
        self.acked = 0
        self.rejected = 0
        self.bytes_sent = 0
        self.batches_sent = 0
        #: Sizes of the latest messages sent (R18 asks for 0.5-3 KB; the benchmark
        #: reports their distribution).
        self.sizes: deque[int] = deque(maxlen=SIZE_HISTORY)

    def flush(self) -> None:
        """Send everything spooled now (cheap to call often)."""
        self._flush.set()

    async def run(self) -> None:
        delay = RETRY_MIN
        while True:
            await self._connected.wait()
            tunnel = self._tunnel()
            if tunnel is None:
                await asyncio.sleep(RETRY_MIN)
                continue
            try:
                channel = await tunnel.open_channel(
                    "telemetry", meta={"v": VERSION}, priority=Priority.TELEMETRY
                )
            except TunnelError as exc:
                log.warning("! telemetry channel not opened: %s; retry in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            log.info("= telemetry channel open")
            if self.on_up is not None:
                self.on_up()
            if self._audit is not None:
                await asyncio.to_thread(self._audit.append, "link", "up")
            try:
                await self._session(channel)
            except (TunnelError, EOFError) as exc:
                log.info("= telemetry channel ended: %s", exc)
            finally:
                self.channel_up.clear()
                channel.reset()
            if self._audit is not None:
                await asyncio.to_thread(self._audit.append, "link", "down")
            await asyncio.sleep(RETRY_MIN)

    async def _session(self, channel: Channel) -> None:
        max_records = channel.accept_meta.get("max_records", self._batch_records)
        if type(max_records) is not int or max_records < 1:
            max_records = self._batch_records
        max_records = min(max_records, self._batch_records)
        inflight: dict[int, list[int]] = {}
        space = asyncio.Event()
        space.set()
        reader = asyncio.create_task(self._read_acks(channel, inflight, space), name="acks")
        self.channel_up.set()
        self._flush.set()  # whatever waited for the link goes now
        after = 0
        batch_id = 0
        try:
            while True:
                flush = asyncio.create_task(self._flush.wait())
                done, _ = await asyncio.wait({flush, reader}, return_when=asyncio.FIRST_COMPLETED)
                flush.cancel()
                if reader in done:
                    reader.result()  # raises the channel's error
                    return  # the relay half-closed
                self._flush.clear()
                while True:
                    while len(inflight) >= WINDOW:
                        space.clear()
                        await _first(space.wait(), reader)
                    rows = await asyncio.to_thread(
                        self._spool.batch, after, max_records, BATCH_BYTES
                    )
                    if not rows:
                        break
                    batch_id += 1
                    inflight[batch_id] = [seq for seq, _ in rows]
                    after = rows[-1][0]
                    message = encode_batch(batch_id, [body for _, body in rows])
                    await channel.send(message)
                    self.batches_sent += 1
                    self.bytes_sent += len(message)
                    self.sizes.append(len(message))
                    log.debug(
                        "> telemetry batch %d: %d records, %d bytes",
                        batch_id,
                        len(rows),
                        len(message),
                    )
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, TunnelError):
                await reader

    async def _read_acks(
        self, channel: Channel, inflight: dict[int, list[int]], space: asyncio.Event
    ) -> None:
        async for data in channel:
            try:
                reply = parse_reply(data)
            except CodecError as exc:
                log.warning("! unreadable telemetry reply: %s", exc.code)
                continue
            seqs = inflight.pop(reply.batch, None) if reply.batch is not None else None
            if seqs is None:
                log.warning("! telemetry reply for unknown batch %r", reply.batch)
                continue
            if isinstance(reply, Ack):
                rejected = len(reply.rejected)
                log.debug(
                    "< ack %d: %d new, %d duplicates, %d rejected",
                    reply.batch,
                    reply.accepted,
                    reply.duplicates,
                    rejected,
                )
            else:
                rejected = len(seqs)
                log.warning("! relay refused telemetry batch %d: %s", reply.batch, reply.error)
            await asyncio.to_thread(self._spool.ack, seqs)
            self.acked += len(seqs) - rejected
            if rejected:
                self.rejected += rejected
                await asyncio.to_thread(self._spool.count_rejected, rejected)
                if self._audit is not None:
                    await asyncio.to_thread(
                        self._audit.append,
                        "telemetry",
                        "rejected",
                        batch=reply.batch,
                        records=rejected,
                    )
            space.set()


async def _first(waiter: Coroutine[Any, Any, Any], reader: asyncio.Task[None]) -> None:
    """Wait for `waiter`, unless the ack reader ends first (then raise its error)."""
    task = asyncio.ensure_future(waiter)
    try:
        done, _ = await asyncio.wait({task, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
    if reader in done:
        reader.result()
        raise EOFError("the relay closed the telemetry channel")
