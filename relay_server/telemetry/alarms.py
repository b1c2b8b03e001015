"""Rules and alarms on the relay (R5, R8): evaluated as data arrives, acted upon at once.

`observe` runs the pure `telemetry.rules.RuleEngine` on each newly stored record (the
ingestion path calls it after the commit, before the ack) and queues what fired; a
`DbWriter` writes alarms in a thread, in batches of WRITE_BATCH
(`store.telemetry.raise_alarm`: one active alarm per device and problem, repeated
firings bump it), and then carries out the rule's other actions: notices to the
`Notifier`, log fetches, priority raises.

Rules are re-read from the database every ``rules_refresh`` seconds (the portal edits
them); offline rules are checked every ``offline_check`` seconds for the devices whose
presence row names this relay (the relay that held a device last speaks for it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from relay_server.dbwriter import DbWriter
from relay_server.tasks import TaskSet
from relay_server.telemetry.config import TelemetryServerConfig
from relay_server.telemetry.notify import EMAIL, WEBHOOK, Notice, Notifier
from store.db import make_sessionmaker, session_scope
from store.fleet import offline_devices
from store.telemetry.alarms import escalate_alarm, raise_alarm
from store.telemetry.rules import TelemetryRule, rules_version
from telemetry.records import Properties, Record, Severity
from telemetry.rules import DeviceInfo, Firing, Rule, RuleEngine, RuleSyntaxError, validate_rule

log = logging.getLogger(__name__)

#: Firings waiting for the alarm writer; a storm beyond this is dropped and counted
#: (the alarms it would bump are open already).
MAX_QUEUED = 10_000
#: Firings per transaction.
WRITE_BATCH = 500
#: A rule's "fetch logs" runs at most once per device and rule in this many seconds.
FETCH_LOGS_INTERVAL = 3600.0

FetchLogs = Callable[[str, str | None, int | None], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Applied:
    """A firing after the database: the alarm it opened or bumped (if it had one)."""

    firing: Firing
    device: DeviceInfo
    alarm_id: int | None
    opened: bool
    severity: Severity


class AlarmDesk:
    """One per relay. `start()`, `observe()` from ingestion, `run()` in a task, `stop()`."""

    def __init__(
        self,
        engine: Engine,
        config: TelemetryServerConfig,
        *,
        relay_id: str,
        notifier: Notifier,
        fetch_logs: FetchLogs | None = None,
    ) -> None:
        self._sessions = make_sessionmaker(engine)
        self._config = config
        self._relay_id = relay_id
        self._notifier = notifier
        self._fetch_logs = fetch_logs
        self.rules = RuleEngine()
        self._version: tuple[int, datetime | None] | None = None
        self._reload_lock = asyncio.Lock()
        self._writer: DbWriter[tuple[Firing, DeviceInfo], list[Applied]] = DbWriter(
            "telemetry-alarms",
            self._apply,
            max_batch=WRITE_BATCH,
            max_queued=MAX_QUEUED,
            written=self._applied,
            failed=self._not_written,
        )
        self._fetched: dict[tuple[str, str], float] = {}
        self.tasks = TaskSet()
        self.stats: Counter[str] = Counter()
        self.applied = asyncio.Event()  # set after each write (tests wait on it)

    # -- input --------------------------------------------------------------------------

    def observe(self, device: DeviceInfo, records: Sequence[Record]) -> DeviceInfo:
        """Evaluate newly stored `records`; returns `device` updated from properties."""
        for record in records:
            if isinstance(record, Properties) and record.values.get("model"):
                device = replace(device, model=record.values["model"])
            for firing in self.rules.on_record(device, record):
                self._enqueue(firing, device)
        return device

    def online(self, device: DeviceInfo) -> None:
        """The device is connected: its offline rules re-arm."""
        self.rules.on_presence(device, None, time.time())

    def _enqueue(self, firing: Firing, device: DeviceInfo) -> None:
        if not self._writer.put_nowait((firing, device)):
            self.stats["dropped"] += 1

    # -- tasks --------------------------------------------------------------------------

    async def start(self) -> None:
        """The alarm writer (before ingestion can observe anything)."""
        await self._writer.start()

    async def stop(self) -> None:
        """Write the firings still queued (and act on them), then stop."""
        await self._writer.stop()

    async def run(self) -> None:
        """Rule reloads and offline checks, until cancelled."""
        await self.reload_rules()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._every(self._config.rules_refresh, self.reload_rules))
                group.create_task(self._every(self._config.offline_check, self.check_offline))
        finally:
            await self.tasks.cancel_all()

    async def _every(self, interval: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception:  # the database may be briefly away; try again next time
                log.exception("! telemetry job %s failed", job.__name__)

    async def reload_rules(self) -> None:
        """Load the enabled rules if they changed since the last load."""
        async with self._reload_lock:  # a slow periodic load must not undo a newer one
            version, rules = await asyncio.to_thread(self._read_rules, self._version)
            if rules is None:
                return
            self.rules.load(rules)
            self._version = version
        log.info("= %d telemetry rules loaded", len(rules))

    def _read_rules(
        self, known: tuple[int, datetime | None] | None
    ) -> tuple[tuple[int, datetime | None], dict[int, Rule] | None]:
        """Worker thread: (version, rules), rules None if the version is `known`."""
        with session_scope(self._sessions) as session:
            version = rules_version(session)
            if version == known:
                return version, None
            rows = session.execute(
                select(TelemetryRule.id, TelemetryRule.text).where(TelemetryRule.enabled)
            ).all()
        rules = {}
        webhooks = self._config.webhooks
        for rule_id, text in rows:
            try:
                rules[rule_id] = validate_rule(text)
            except RuleSyntaxError as exc:  # saved by an older version of the language
                log.error("! rule %d is not valid and is skipped: %s", rule_id, exc)
                continue
            for action in rules[rule_id].actions:
                if action.kind == "webhook" and action.value not in webhooks:
                    log.warning("! rule %d names unknown webhook %r", rule_id, action.value)
        return version, rules

    async def check_offline(self) -> None:
        if not self.rules.offline_rules():
            return
        rows = await asyncio.to_thread(self._offline)
        now = time.time()
        for device_id, customer, site, model, since in rows:
            if since is None:
                continue
            device = DeviceInfo(device_id, customer, site, model)
            for firing in self.rules.on_presence(device, since.timestamp(), now):
                self._enqueue(firing, device)

    def _offline(self) -> list[tuple[str, str, str, str | None, datetime | None]]:
        with session_scope(self._sessions) as session:
            return offline_devices(session, self._relay_id)

    def _applied(self, _batch: list[tuple[Firing, DeviceInfo]], applied: list[Applied]) -> None:
        for item in applied:
            self._act(item)
        self.applied.set()

    def _not_written(self, batch: list[tuple[Firing, DeviceInfo]], _exc: BaseException) -> None:
        self.stats["write_failed"] += len(batch)

    # -- actions --------------------------------------------------------------------------

    def _apply(self, batch: list[tuple[Firing, DeviceInfo]]) -> list[Applied]:
        """Worker thread: alarms (and priority raises) in one transaction."""
        out = []
        now = datetime.now(UTC)
        with session_scope(self._sessions) as session:
            for firing, device in batch:
                alarm_id, opened, severity = None, False, firing.severity
                if any(a.kind == "alarm" for a in firing.actions):
                    alarm, opened = raise_alarm(
                        session,
                        device_id=firing.device_id,
                        key=firing.key,
                        severity=firing.severity,
                        title=firing.title,
                        ts=firing.ts,
                        rule_id=firing.rule_id,
                        now=now,
                    )
                    session.flush()
                    alarm_id, severity = alarm.id, Severity(alarm.severity)
                    for action in firing.actions:
                        if action.kind == "priority" and action.level is not None:
                            escalate_alarm(session, alarm.id, action.level, now)
                            severity = max(severity, action.level)
                out.append(Applied(firing, device, alarm_id, opened, severity))
        for item in out:
            self.stats["opened" if item.opened else "bumped" if item.alarm_id else "fired"] += 1
        return out

    def _act(self, item: Applied) -> None:
        firing, device = item.firing, item.device
        for action in firing.actions:
            if action.kind in (EMAIL, WEBHOOK):
                self._notifier.enqueue(self._notice(item, action.kind, action.value))
            elif action.kind == "fetch_logs" and self._fetch_logs is not None:
                key = (device.device_id, firing.key)
                last = self._fetched.get(key, float("-inf"))
                if item.opened or time.monotonic() - last >= FETCH_LOGS_INTERVAL:
                    self._fetched[key] = time.monotonic()
                    self.tasks.spawn(
                        self._fetch_logs(device.device_id, action.value or None, firing.rule_id),
                        name=f"fetch-logs {device.device_id}",
                    )

    def _notice(self, item: Applied, channel: str, target: str) -> Notice:
        firing, device = item.firing, item.device
        level = item.severity.label.upper()
        where = f"{device.customer}/{device.site}"
        subject = f"[Outlink] {level}: {firing.title} ({where})"[:200]
        link = self._config.portal_url
        lines = [
            f"Alarm on device {device.device_id} ({where}"
            + (f", model {device.model})" if device.model else ")"),
            "",
            f"  {firing.title}",
            f"  severity: {item.severity.label}",
            f"  first seen: {datetime.fromtimestamp(firing.ts, UTC):%Y-%m-%d %H:%M:%S} UTC",
        ]
        if firing.rule_id is not None:
            lines.append(f"  rule: #{firing.rule_id}")
        if link:
            lines += ["", f"  {link.rstrip('/')}/devices/{device.device_id}"]
        payload = {
            "event": "alarm",
            "alarm": {
                "id": item.alarm_id,
                "key": firing.key,
                "title": firing.title,
                "severity": item.severity.label,
                "opened": item.opened,
                "ts": firing.ts,
                "rule_id": firing.rule_id,
            },
            "device": {
                "id": device.device_id,
                "customer": device.customer,
                "site": device.site,
                "model": device.model,
            },
        }
        return Notice(
            channel=channel,
            target=target,
            dedup_key=f"{device.device_id}:{firing.key}",
            alarm_id=item.alarm_id,
            rule_id=firing.rule_id,
            device_id=device.device_id,
            subject=subject,
            text="\n".join(lines) + "\n",
            payload=payload,
        )
