"""The agent's telemetry schedule (R16, R17): what is measured when, and when it goes.

* every ``poll_interval`` (60 s): system metrics + device readings + spool counters,
  one ``metrics`` record;
* every ``tail_interval`` (0.5 s): new lines of each device source; their events are
  scrubbed (R28, whatever the source), spooled with the source positions, and an
  URGENT one flushes the sender at once;
* every ``send_interval`` (5 min): flush the sender (the scheduled batch);
* every ``properties_interval`` (1 h) and at start: device properties, spooled only
  when they changed.

Each loop sleeps until its next deadline on the monotonic clock (no drift, no busy
loop); blocking work (psutil, file reads, SQLite) runs in worker threads, one at a time
per loop, so the agent uses a sliver of one core at most (R32).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.audit import AuditLog
from agent.telemetry.collectors import SystemCollector
from agent.telemetry.sender import Sender
from agent.telemetry.sources import DeviceSource
from agent.telemetry.spool import Spool
from telemetry.records import MAX_MESSAGE, Event, Metrics, Properties, Record, metric_allowed
from telemetry.scrub import Scrubber

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: Urgent device events written to the local audit log per minute at most; a device
#: that floods urgent codes gets one summary line for the rest.
URGENT_AUDIT_PER_MINUTE = 10


class Poller:
    """Runs the schedule. `run()` until cancelled."""

    def __init__(
        self,
        *,
        spool: Spool,
        sender: Sender,
        collector: SystemCollector | None,
        sources: list[DeviceSource],
        properties: DeviceSource | None,
        scrubber: Scrubber,
        audit: AuditLog | None,
        poll_interval: float,
        send_interval: float,
        tail_interval: float,
        properties_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spool = spool
        self._sender = sender
        self._collector = collector
        self._sources = sources
        self._properties = properties
        self._scrubber = scrubber
        self._audit = audit
        self._intervals = (poll_interval, send_interval, tail_interval, properties_interval)
        self._clock = clock
        self._positions: dict[str, str | None] = {}
        self._last_properties: dict[str, str] | None = None
        self._audit_window = (0.0, 0, 0)  # (minute start, audited, suppressed)
        self.polls = 0

    async def run(self) -> None:
        poll, send, tail, props = self._intervals
        for source in self._sources:
            self._positions[source.name] = await asyncio.to_thread(
                self._spool.position, source.name
            )
        async with asyncio.TaskGroup() as group:
            group.create_task(_every(props, self.read_properties), name="properties")
            group.create_task(_every(tail, self.tail), name="tail")
            group.create_task(_every(poll, self.poll), name="poll")
            group.create_task(_every(send, self._flush, first=send), name="send")

    async def _flush(self) -> None:
        self._sender.flush()

    async def poll(self) -> None:
        """One poll: system metrics, device readings, spool state -> one metrics record."""
        values = await asyncio.to_thread(self._measure)
        if values:
            await self._spool_records([Metrics(0, round(self._clock(), 3), values)])
        if self.polls == 0:
            self._sender.flush()  # a (re)started device shows up at once, not in 5 minutes
        self.polls += 1

    def _measure(self) -> dict[str, float]:
        values = self._collector.collect() if self._collector is not None else {}
        for source in self._sources:
            try:
                readings = source.readings()
            except Exception:  # a plug-in's bug must not stop the polls
                log.exception("! source %s: readings failed", source.name)
                continue
            values.update({k: v for k, v in readings.items() if metric_allowed(k)})
        stats = self._spool.stats()
        values["agent.spool_records"] = float(stats.records)
        values["agent.spool_kb"] = round(stats.bytes / 1024, 1)
        values["agent.dropped_routine"] = float(stats.dropped_routine)
        values["agent.dropped_urgent"] = float(stats.dropped_urgent)
        values["agent.rejected"] = float(stats.rejected)
        return values

    async def tail(self) -> None:
        """New events of every source; urgent ones are sent at once (R17)."""
        for source in self._sources:
            old = self._positions.get(source.name)
            try:
                events, position = await asyncio.to_thread(source.poll_events, old)
            except Exception:
                log.exception("! source %s: reading events failed", source.name)
                continue
            if not events and position == old:
                continue
            events = [self._clean(e) for e in events]
            positions = {source.name: position} if position is not None else {}
            await self._spool_records(list(events), positions)
            self._positions[source.name] = position
            urgent = [e for e in events if e.urgent]
            if urgent:
                log.info("= %d urgent event(s) from %s: sending now", len(urgent), source.name)
                self._sender.flush()
                await self._audit_urgent(urgent)

    def _clean(self, event: Event) -> Event:
        """What leaves the device (R28): scrubbed, printable, bounded -- whatever the
        source plug-in did."""
        message = self._scrubber.scrub(_CONTROL.sub(" ", event.message))[:MAX_MESSAGE]
        return dataclasses.replace(event, message=message)

    async def read_properties(self) -> None:
        if self._properties is None:
            return
        values = await asyncio.to_thread(self._properties.properties)
        if values and values != self._last_properties:
            await self._spool_records([Properties(0, round(self._clock(), 3), values)])
            self._last_properties = values

    async def _spool_records(
        self, records: list[Record], positions: dict[str, str] | None = None
    ) -> None:
        await asyncio.to_thread(self._spool.append, records, positions)

    async def _audit_urgent(self, events: list[Event]) -> None:
        if self._audit is None:
            return
        start, audited, suppressed = self._audit_window
        now = self._clock()
        if now - start >= 60:
            if suppressed:
                await asyncio.to_thread(
                    self._audit.append, "device_event", "suppressed", urgent_events=suppressed
                )
            start, audited, suppressed = now, 0, 0
        for event in events:
            if audited < URGENT_AUDIT_PER_MINUTE:
                audited += 1
                await asyncio.to_thread(
                    self._audit.append,
                    "device_event",
                    "urgent",
                    source=event.source,
                    code=event.code,
                    message=event.message,
                )
            else:
                suppressed += 1
        self._audit_window = (start, audited, suppressed)


async def _every(interval: float, job: Callable[[], Awaitable[Any]], *, first: float = 0.0) -> None:
    """Run `job` at `first`, then every `interval` seconds on the monotonic clock.

    A job that overruns skips the deadlines it missed instead of running back to back.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + first
    while True:
        delay = deadline - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await job()
        except Exception:  # keep the schedule alive whatever one run did (R1)
            log.exception("! telemetry job %s failed", getattr(job, "__name__", job))
        now = loop.time()
        deadline += interval
        if deadline < now:
            deadline = now + interval - ((now - deadline) % interval)
