"""Notifications of alarms (R8): e-mail through SMTP and HMAC-signed webhooks.

Every notice is first *decided* in the database
(`store.telemetry.notifications.decide_notification`): the same alarm key to the same
target within ``dedup_window`` is a ``duplicate``; a target that already got
``rate_limit`` notices within ``rate_window`` is ``rate_limited``. Both are recorded
and counted, not sent, so a flapping device cannot flood anyone. The rest is delivered
by a few workers in threads (smtplib, urllib), retried ``attempts`` times with doubling
delays, and recorded as sent or failed.

Webhook body: JSON ``{"event": "alarm", "alarm": {...}, "device": {...}, "sent_at"}``,
signed as `telemetry.signing` describes. E-mails are plain text. Neither carries more
than the alarm's title (already scrubbed text) and the device's identity.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from sqlalchemy import Engine

from relay_server.telemetry.config import TelemetryServerConfig
from store.db import make_sessionmaker, session_scope
from store.telemetry.notifications import NOTIFY_PENDING, decide_notification, finish_notification
from telemetry.signing import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

log = logging.getLogger(__name__)

#: Notices waiting for a worker; an alarm storm beyond this is dropped (and counted):
#: the rate limit would suppress most of it anyway.
MAX_QUEUED = 1000
#: Parallel deliveries: one slow webhook must not hold up an urgent e-mail.
WORKERS = 3

EMAIL = "email"
WEBHOOK = "webhook"


class DeliveryError(Exception):
    """A notice could not be delivered; the text is for our log and the notification row."""


@dataclass(frozen=True, slots=True)
class Notice:
    channel: str  # EMAIL or WEBHOOK
    target: str  # an address, or a configured webhook's name
    dedup_key: str
    alarm_id: int | None
    rule_id: int | None
    device_id: str
    subject: str
    text: str
    payload: dict[str, Any]


class Notifier:
    """Decides and delivers notices. `enqueue` from anywhere on the loop; `run()` in a task."""

    def __init__(self, engine: Engine, config: TelemetryServerConfig) -> None:
        self._sessions = make_sessionmaker(engine)
        self._config = config
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(MAX_QUEUED)
        self.stats: Counter[tuple[str, str]] = Counter()  # (channel, status)
        self.delivered = asyncio.Event()  # set after each decided notice (tests wait on it)
        # Decisions count what was sent before: one at a time, or parallel workers would
        # all see the same count and all pass the rate limit.
        self._deciding = asyncio.Lock()

    def enqueue(self, notice: Notice) -> None:
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            self.stats[(notice.channel, "dropped")] += 1
            log.warning(
                "! notification queue full: %s to %s dropped", notice.channel, notice.target
            )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for n in range(WORKERS):
                group.create_task(self._worker(), name=f"notifier-{n}")

    async def _worker(self) -> None:
        while True:
            notice = await self._queue.get()
            try:
                await self._deliver(notice)
            except Exception:  # the database is away: the notice is lost, say so
                self.stats[(notice.channel, "error")] += 1
                log.exception("! notification to %s could not be recorded", notice.target)
            finally:
                self.delivered.set()

    async def _deliver(self, notice: Notice) -> None:
        notify = self._config.notify
        async with self._deciding:
            row_id, status = await asyncio.to_thread(self._decide, notice)
        if status != NOTIFY_PENDING:
            self.stats[(notice.channel, status)] += 1
            log.info("= notification %s to %s: %s", notice.channel, notice.target, status)
            return
        error: str | None = None
        attempts = 0
        for attempts in range(1, notify.attempts + 1):
            try:
                await asyncio.to_thread(self._send, notice, row_id)
                error = None
                break
            except DeliveryError as exc:
                error = str(exc)
                log.warning(
                    "! %s to %s failed (attempt %d): %s",
                    notice.channel,
                    notice.target,
                    attempts,
                    exc,
                )
                if attempts < notify.attempts:
                    await asyncio.sleep(notify.retry_delay * 2 ** (attempts - 1))
        ok = error is None
        self.stats[(notice.channel, "sent" if ok else "failed")] += 1
        await asyncio.to_thread(self._finish, row_id, ok, attempts, error)
        if ok:
            log.info("> %s to %s sent (notification %d)", notice.channel, notice.target, row_id)

    def _decide(self, notice: Notice) -> tuple[int, str]:
        notify = self._config.notify
        with session_scope(self._sessions) as session:
            row = decide_notification(
                session,
                channel=notice.channel,
                target=notice.target,
                dedup_key=notice.dedup_key,
                alarm_id=notice.alarm_id,
                rule_id=notice.rule_id,
                device_id=notice.device_id,
                now=datetime.now(UTC),
                dedup_window=timedelta(seconds=notify.dedup_window),
                rate_limit=notify.rate_limit,
                rate_window=timedelta(seconds=notify.rate_window),
            )
            return row.id, row.status

    def _finish(self, row_id: int, ok: bool, attempts: int, error: str | None) -> None:
        with session_scope(self._sessions) as session:
            finish_notification(
                session, row_id, ok=ok, attempts=attempts, error=error, now=datetime.now(UTC)
            )

    # -- delivery (worker threads) ----------------------------------------------------------

    def _send(self, notice: Notice, delivery_id: int) -> None:
        if notice.channel == EMAIL:
            self._send_email(notice)
        else:
            self._send_webhook(notice, delivery_id)

    def _send_email(self, notice: Notice) -> None:
        smtp = self._config.smtp
        if not smtp.host:
            raise DeliveryError("no SMTP server configured")
        message = EmailMessage()
        message["From"] = smtp.sender
        message["To"] = notice.target
        message["Subject"] = notice.subject
        message.set_content(notice.text)
        try:
            with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
                if smtp.starttls:
                    client.starttls(context=ssl.create_default_context())
                if smtp.username:
                    client.login(smtp.username, smtp.password)
                client.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP: {type(exc).__name__}: {exc}"[:200]) from None

    def _send_webhook(self, notice: Notice, delivery_id: int) -> None:
        hook = self._config.webhooks.get(notice.target)
        if hook is None:
            raise DeliveryError(f"no webhook named {notice.target!r} is configured")
        body = json.dumps(
            {**notice.payload, "sent_at": time.time()}, separators=(",", ":"), sort_keys=True
        ).encode()
        timestamp = int(time.time())
        request = urllib.request.Request(  # noqa: S310 - the URL is validated config
            hook.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "outlink-relay",
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(hook.secret, timestamp, body),
                DELIVERY_HEADER: str(delivery_id),
            },
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self._config.notify.webhook_timeout
            ) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"webhook answered {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise DeliveryError(f"webhook: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"webhook answered {status}")
