"""The ``telemetry`` channel, relay side: validate, store, evaluate, acknowledge.

Per message (`telemetry.codec`): parse and validate against the sender's certificate
identity (a batch or record naming another device is refused and recorded as a
security event by the relay's audit writer); scrub event messages once more (an old or
misconfigured agent must not put personal data into the database, R28); hand the
valid records to the `Ingestor`; when they are committed, let the `AlarmDesk` evaluate
the new ones; then acknowledge. A message that cannot be parsed is answered with an error, counted,
and the channel stays open; a message over MAX_MESSAGE resets this channel only (the
tunnel enforces the channel's max_message). If the database fails, the channel is
reset (UNAVAILABLE) without an ack, so the agent keeps the batch and sends it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select

from relay_server.telemetry.alarms import AlarmDesk
from relay_server.telemetry.ingest import Ingestor
from store.db import make_sessionmaker, session_scope
from store.models import Device
from telemetry.codec import (
    ERR_UNAVAILABLE,
    MAX_BATCH_RECORDS,
    MAX_MESSAGE,
    VERSION,
    Ack,
    CodecError,
    encode_ack,
    encode_error,
    parse_batch,
)
from telemetry.records import ERR_WRONG_DEVICE, Event, Record
from telemetry.rules import DeviceInfo
from telemetry.scrub import Scrubber
from tunnel import ErrorCode, Priority
from tunnel.aio import Channel, ChannelError, ChannelResetError, IncomingChannel

if TYPE_CHECKING:
    from relay_server.agent_link import AgentLink
    from relay_server.audit import AuditLog

log = logging.getLogger(__name__)


class TelemetryChannels:
    """Serves every agent's telemetry channel (one instance per relay)."""

    def __init__(
        self,
        engine: Engine,
        *,
        audit: AuditLog,
        ingestor: Ingestor,
        alarms: AlarmDesk,
        scrubber: Scrubber | None = None,
    ) -> None:
        self._sessions = make_sessionmaker(engine)
        self._audit = audit
        self._ingestor = ingestor
        self._alarms = alarms
        self._scrubber = scrubber or Scrubber()
        #: (what, outcome): ("batch", "ok"/"malformed"/...), ("record", "accepted"/...)
        self.stats: Counter[tuple[str, str]] = Counter()
        self.bytes_received = 0

    async def serve(self, link: AgentLink, request: IncomingChannel) -> None:
        """`ControlContext.channels["telemetry"]`: one agent's channel, until it ends."""
        identity = link.identity
        channel = request.accept(
            {"v": VERSION, "max_records": MAX_BATCH_RECORDS},
            priority=Priority.TELEMETRY,
            max_message=MAX_MESSAGE,
        )
        device = DeviceInfo(identity.device_id, identity.customer, identity.site)
        device = dataclasses.replace(device, model=await asyncio.to_thread(self._model, device))
        self._alarms.online(device)
        log.debug("= telemetry channel open")
        try:
            async for data in channel:
                self.bytes_received += len(data)
                device = await self._message(link, channel, device, data)
            await channel.close()
        except ChannelResetError as exc:
            if exc.code is ErrorCode.MESSAGE_TOO_LARGE:
                self.stats[("batch", "too_large")] += 1
                log.warning("! telemetry message over %d bytes: channel reset", MAX_MESSAGE)
            else:
                log.debug("= telemetry channel reset: %s", exc)
        except ChannelError as exc:
            log.debug("= telemetry channel ended: %s", exc)

    async def _message(
        self, link: AgentLink, channel: Channel, device: DeviceInfo, data: bytes
    ) -> DeviceInfo:
        try:
            batch = parse_batch(data, now=time.time(), device_id=device.device_id)
        except CodecError as exc:
            self.stats[("batch", exc.code)] += 1
            log.warning("! telemetry message refused: %s", exc.code)
            if exc.code == ERR_WRONG_DEVICE:
                self._audit_wrong_device(link, "batch")
            await channel.send(encode_error(exc.batch, exc.code, exc.message))
            return device
        for _, code in batch.rejected:
            self.stats[("record", code)] += 1
        if any(code == ERR_WRONG_DEVICE for _, code in batch.rejected):
            self._audit_wrong_device(link, "record")
        records = [self._scrubbed(r) for r in batch.records]
        try:
            outcome = await self._ingestor.submit(device.device_id, records)
        except Exception:  # the database: no ack, the agent keeps the batch and resends
            self.stats[("batch", ERR_UNAVAILABLE)] += 1
            channel.reset(ErrorCode.UNAVAILABLE, "telemetry storage unavailable")
            raise ChannelResetError(ErrorCode.UNAVAILABLE, "storage", remote=False) from None
        self.stats[("batch", "ok")] += 1
        self.stats[("record", "accepted")] += len(outcome.new)
        self.stats[("record", "duplicate")] += outcome.duplicates
        device = self._alarms.observe(device, outcome.new)
        await channel.send(
            encode_ack(
                Ack(batch.batch, len(outcome.new), outcome.duplicates, tuple(batch.rejected))
            )
        )
        return device

    def _scrubbed(self, record: Record) -> Record:
        if isinstance(record, Event) and record.message:
            message = self._scrubber.scrub(record.message)
            if message != record.message:
                self.stats[("record", "scrubbed_by_relay")] += 1
                return dataclasses.replace(record, message=message)
        return record

    def _model(self, device: DeviceInfo) -> str | None:
        with session_scope(self._sessions) as session:
            return session.scalar(select(Device.model).where(Device.id == device.device_id))

    def _audit_wrong_device(self, link: AgentLink, where: str) -> None:
        """A device tried to speak for another one: a security event for the trail."""
        self._audit.record(
            "telemetry.wrong_device",
            f"telemetry {where} naming another device refused",
            outcome="failure",
            device_id=link.device_id,
            source=link.peer,
            serial=link.serial,
        )
