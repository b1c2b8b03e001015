"""Agent -> relay -> database, in process with every part real: polls and events arrive
once and scrubbed, urgent codes and rules raise alarms, e-mails and signed webhooks go
out once, and hostile telemetry is refused and counted without hurting other channels."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agent.telemetry.sources import SOURCE_TYPES, DeviceSource, register_source_type
from pki.identity import DeviceIdentity
from protocol.envelope import decode, encode_request
from relay_server.telemetry.config import NotifyConfig
from store.models import Presence
from store.portal import AuditEvent
from store.telemetry.alarms import TelemetryAlarm
from store.telemetry.events import TelemetryEvent
from store.telemetry.notifications import TelemetryNotification
from store.telemetry.records import TelemetryRecord, latest_values
from store.telemetry.rules import TelemetryRule, create_rule
from telemetry.codec import MAX_BATCH_RECORDS, MAX_MESSAGE, Ack, encode_batch, parse_reply
from telemetry.records import Event, Severity
from telemetry.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.conftest import UNIT
from tests.telemetry.conftest import WEBHOOK_SECRET, World, dump_text
from tunnel import ErrorCode, Role
from tunnel.aio import ChannelResetError, Tunnel, websocket_options

T = 10 * UNIT

PERSONAL = [
    "DOE^JOHN",
    "12345678",
    "1961-04-02",
    "Jane Smith",
    "10.20.30.40",
    "jane.smith@hospital.example",
    "fe80::1",
]
LINE = (
    '{ts} INFO  [acq] I1001 Scan started patient="DOE^JOHN" PID=12345678 DOB 1961-04-02 '
    "operator Jane Smith ws 10.20.30.40 mail jane.smith@hospital.example via fe80::1\n"
)


def stamp(offset: float = 0.0) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + offset)) + ".000"


def log_source(path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "sources": [{"name": "app", "path": str(path), "from_start": True, **extra}],
        "severity": {"default": "warning", "codes": {"I*": "routine", "E9*": "urgent"}},
    }


async def test_polls_events_and_properties_arrive_once_and_without_personal_data(
    world: World, tmp_path: Path
) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    props = tmp_path / "device.json"
    props.write_text(json.dumps({"model": "CT-9000", "serial": "SN-1", "operator": "Jane Smith"}))
    agent = await world.agent(telemetry={**log_source(log), "properties_file": str(props)})
    with open(log, "a") as f:
        for n in range(20):
            f.write(LINE.format(ts=stamp(-n)))
        f.write(f"{stamp()} ERROR [tube] E9001 Tube overtemperature patient=DOE^JOHN\n")
    await world.until(
        lambda s: s.scalar(select(func.count(TelemetryEvent.id))) == 21, "21 events stored"
    )
    poller, sender = agent.telemetry.poller, agent.telemetry.sender
    assert poller is not None and sender is not None
    await poller.poll()
    sender.flush()
    latest = await world.until(
        lambda s: (v := latest_values(s, agent.device_id)).values and v, "the poll"
    )
    assert latest.properties == {"model": "CT-9000", "serial": "SN-1"}
    assert {"cpu.percent", "mem.percent", "agent.spool_records"} <= latest.values.keys()
    # Every line once; a resend of everything changes nothing.
    spool = agent.telemetry.spool
    assert spool is not None
    await world.until(lambda s: spool.stats().records == 0, "spool drained")
    events = world.db(lambda s: s.scalars(select(TelemetryEvent)).all())
    assert sorted(e.code for e in events) == ["E9001"] + ["I1001"] * 20
    assert events[0].message.startswith("Scan started patient=<name> PID=<id> DOB <dob>")
    # Nothing personal anywhere in what the server stored.
    stored = dump_text(world.engine)
    for secret in PERSONAL:
        assert secret not in stored
    stats = world.service.channels.stats
    assert stats[("record", "duplicate")] == 0


async def test_urgent_code_raises_an_alarm_and_the_rule_notifies_once_by_mail_and_webhook(
    world: World, tmp_path: Path
) -> None:
    world.db(
        lambda s: create_rule(
            s,
            name="tube",
            text="when severity >= urgent on customer acme then alarm urgent, "
            "email service@vendor.example, webhook ops",
            actor="test",
        )
    )
    await world.service.alarms.reload_rules()
    log = tmp_path / "app.log"
    log.write_text("")
    agent = await world.agent(telemetry=log_source(log))
    written = time.time()
    with open(log, "a") as f:
        f.write(f"{stamp()} ERROR [tube] E9001 Tube overtemperature (94.5 C) patient=DOE^JOHN\n")

    def alarms(s: Session) -> list[TelemetryAlarm] | None:
        return list(s.scalars(select(TelemetryAlarm))) or None

    (alarm,) = await world.until(alarms, "the alarm")  # one event, one alarm, not two
    assert time.time() - written < 5 * UNIT
    rule_id = world.db(lambda s: s.scalar(select(TelemetryRule.id)))
    assert (alarm.key, alarm.severity, alarm.device_id, alarm.rule_id, alarm.count) == (
        "code:E9001",
        Severity.URGENT,
        agent.device_id,
        rule_id,
        1,
    )
    await world.smtp.signal.wait_for(lambda: len(world.smtp.messages) == 1)
    await world.hooks.signal.wait_for(lambda: len(world.hooks.requests) == 1)
    mail = world.smtp.messages[0]
    assert mail["X-Rcpt"] == "service@vendor.example"
    assert "URGENT" in mail["Subject"] and "E9001" in mail["Subject"]
    assert "DOE" not in mail.as_string() and agent.device_id in mail.get_payload()
    headers, body = world.hooks.requests[0]
    assert verify(
        WEBHOOK_SECRET,
        headers[TIMESTAMP_HEADER],
        headers[SIGNATURE_HEADER],
        body,
        now=time.time(),
    )
    assert not verify(
        b"x" * 32, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], body, now=time.time()
    )
    payload = json.loads(body)
    assert payload["device"]["id"] == agent.device_id
    assert payload["alarm"]["severity"] == "urgent"
    # The device keeps failing: the alarm is bumped, nobody is notified again.
    with open(log, "a") as f:
        for _ in range(5):
            f.write(f"{stamp()} ERROR [tube] E9001 Tube overtemperature\n")
    await world.until(
        lambda s: (
            s.scalar(select(TelemetryAlarm.count).where(TelemetryAlarm.key == "code:E9001")) == 6
        ),
        "alarm bumped",
    )
    await world.until(
        lambda s: (
            s.scalar(
                select(func.count(TelemetryNotification.id)).where(
                    TelemetryNotification.status == "duplicate"
                )
            )
            >= 2
        ),
        "duplicates recorded",
    )
    assert len(world.smtp.messages) == 1 and len(world.hooks.requests) == 1


@pytest.mark.parametrize(
    "telemetry_settings", [{"notify": NotifyConfig(rate_limit=2, retry_delay=0.05, attempts=1)}]
)
async def test_a_flapping_device_is_rate_limited(world: World, tmp_path: Path) -> None:
    for code in ("E9001", "E9002", "E9003"):
        world.db(
            lambda s, c=code: create_rule(
                s,
                name=c,
                text=f"when code {c} then alarm, email oncall@vendor.example",
                actor="t",
            )
        )
    await world.service.alarms.reload_rules()
    log = tmp_path / "app.log"
    log.write_text("")
    await world.agent(telemetry=log_source(log))
    with open(log, "a") as f:
        for code in ("E9001", "E9002", "E9003"):
            f.write(f"{stamp()} ERROR [tube] {code} failing\n")
    await world.until(
        lambda s: (
            s.scalar(
                select(func.count(TelemetryNotification.id)).where(
                    TelemetryNotification.status == "rate_limited"
                )
            )
            == 1
        ),
        "one notification rate-limited",
    )
    await world.smtp.signal.wait_for(lambda: len(world.smtp.messages) == 2)
    assert world.service.notifier.stats[("email", "rate_limited")] == 1


class TubeSensor(DeviceSource):
    """A plug-in device source: a numeric reading of the equipment."""

    value = 50.0

    def readings(self) -> dict[str, float]:
        return {"device.tube_temp": self.value}


async def test_a_plugin_reading_crossing_a_threshold_raises_an_alarm(world: World) -> None:
    TubeSensor.value = 50.0
    register_source_type("tube-sensor", lambda config, context: TubeSensor(config.name))
    try:
        world.db(
            lambda s: create_rule(
                s,
                name="hot",
                text="when metric device.tube_temp > 90 then alarm warning",
                actor="t",
            )
        )
        await world.service.alarms.reload_rules()
        agent = await world.agent(
            telemetry={"sources": [{"name": "tube", "path": "-", "type": "tube-sensor"}]}
        )
        poller, sender = agent.telemetry.poller, agent.telemetry.sender
        assert poller is not None and sender is not None
        await poller.poll()
        sender.flush()
        await world.until(
            lambda s: s.scalar(select(func.count(TelemetryRecord.seq))) >= 1, "first poll"
        )
        assert world.db(lambda s: s.scalars(select(TelemetryAlarm)).all()) == []
        TubeSensor.value = 97.5
        await poller.poll()
        sender.flush()
        (alarm,) = await world.until(
            lambda s: s.scalars(select(TelemetryAlarm)).all(), "threshold alarm"
        )
        assert alarm.title == "device.tube_temp > 90 (now 97.5)"
    finally:
        del SOURCE_TYPES["tube-sensor"]


async def test_offline_rule(world: World) -> None:
    world.db(
        lambda s: create_rule(s, name="gone", text="when offline > 0.2s then alarm", actor="t")
    )
    await world.service.alarms.reload_rules()
    agent = await world.agent()
    await world.until(lambda s: s.get(Presence, agent.device_id), "presence row written")
    await agent.stop()
    (alarm,) = await world.until(lambda s: s.scalars(select(TelemetryAlarm)).all(), "offline alarm")
    assert alarm.device_id == agent.device_id and "offline" in alarm.title


# -- a hostile test agent ----------------------------------------------------------------


async def raw_agent(world: World) -> tuple[Tunnel, asyncio.Task[None], str]:
    """A test agent: a bare tunnel with a real device certificate, no agent software."""
    from websockets.asyncio.client import connect

    from tunnel import SUBPROTOCOLS

    cert = world.device()
    assert isinstance(cert.identity, DeviceIdentity)
    ws = await connect(
        world.url + "/agent",
        ssl=world.pki.client_context(cert),
        subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
        open_timeout=T,
        **websocket_options(),
    )
    tunnel = Tunnel(ws, role=Role.CLIENT, name="test-agent")
    return tunnel, asyncio.create_task(tunnel.run()), cert.identity.device_id


async def control_ping(tunnel: Tunnel) -> bool:
    control = await tunnel.open_channel("control")
    await control.send(encode_request(1, "hello", version="test", capabilities=[]))
    reply = decode(await asyncio.wait_for(control.recv(), T), 1 << 20)
    await control.close()
    return bool(getattr(reply, "ok", False))


async def test_malformed_and_oversized_telemetry_is_refused_counted_and_contained(
    world: World,
) -> None:
    tunnel, runner, device_id = await raw_agent(world)
    try:
        channel = await tunnel.open_channel("telemetry", meta={"v": 1})
        assert channel.accept_meta["max_records"] == MAX_BATCH_RECORDS

        async def send(data: bytes) -> Any:
            await channel.send(data)
            return parse_reply(await asyncio.wait_for(channel.recv(), T))

        assert (await send(b"\x00 not json")).error == "malformed"
        assert (await send(encode_batch(1, [b"{}"] * (MAX_BATCH_RECORDS + 1)))).error == (
            "too_many_records"
        )
        other = "0f1c2d3e-4a5b-4c6d-8e7f-901234567890"
        wrong = b'{"type":"batch","batch":2,"device":"%s","records":[]}' % other.encode()
        assert (await send(wrong)).error == "wrong_device"
        now = time.time()
        good = json.dumps({"seq": 5, "ts": now, "kind": "metrics", "values": {"cpu.percent": 1}})
        big = json.dumps(
            {
                "seq": 6,
                "ts": now,
                "kind": "event",
                "code": "E1",
                "severity": "urgent",
                "source": "app",
                "message": "x" * 5000,
            }
        )
        spoof = json.dumps(
            {"seq": 7, "ts": now, "kind": "metrics", "device": other, "values": {"cpu.percent": 1}}
        )
        ack = await send(encode_batch(3, [good.encode(), big.encode(), spoof.encode()]))
        assert isinstance(ack, Ack)
        assert (ack.accepted, ack.rejected) == (1, ((6, "too_large"), (7, "wrong_device")))
        assert await control_ping(tunnel)  # other channels keep working
        # A message over the channel's limit resets this channel only.
        state = tunnel._conn._channels[channel.id]  # misbehave on purpose: ignore the limit
        state.peer_max_message = 10 * MAX_MESSAGE
        await channel.send(b"x" * (MAX_MESSAGE + 1))
        with pytest.raises(ChannelResetError) as info:
            await asyncio.wait_for(channel.recv(), T)
        assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
        assert await control_ping(tunnel)
    finally:
        await tunnel.close()
        await runner
    stats = world.service.channels.stats
    assert stats[("batch", "malformed")] == 1
    assert stats[("batch", "too_many_records")] == 1
    assert stats[("batch", "wrong_device")] == 1
    assert stats[("record", "too_large")] == 1 and stats[("record", "wrong_device")] == 1
    assert stats[("batch", "too_large")] == 1
    scrape = generate_latest(world.relay.metrics_registry).decode()
    assert 'outlink_telemetry_messages_total{outcome="malformed",what="batch"} 1.0' in scrape
    assert 'outlink_telemetry_messages_total{outcome="too_large",what="record"} 1.0' in scrape
    # Only the good record is stored, under the certificate's device id.
    rows = world.db(
        lambda s: s.execute(select(TelemetryRecord.device_id, TelemetryRecord.seq)).all()
    )
    assert [tuple(r) for r in rows] == [(device_id, 5)]
    await world.relay.audit.flush()  # the relay's batched audit writer
    audits = world.db(
        lambda s: s.scalars(
            select(AuditEvent.device_id).where(AuditEvent.kind == "telemetry.wrong_device")
        ).all()
    )
    assert audits == [device_id, device_id]


class ConsoleSource(DeviceSource):
    """A careless plug-in: its events carry personal data and control characters."""

    sent = False

    def poll_events(self, position: str | None) -> tuple[list[Event], str | None]:
        if self.sent:
            return [], position
        self.sent = True
        message = "Exam by operator Jane Smith\x07 for patient=DOE^JOHN at 10.1.2.3"
        return [Event(0, time.time(), "E9100", Severity.URGENT, "console", message)], "1"


async def test_events_of_any_plugin_are_scrubbed_before_they_leave(world: World) -> None:
    register_source_type("console", lambda config, context: ConsoleSource(config.name))
    try:
        await world.agent(
            telemetry={"sources": [{"name": "console", "path": "-", "type": "console"}]}
        )
        event = await world.until(lambda s: s.scalars(select(TelemetryEvent)).first(), "event")
        assert event.message == "Exam by operator <name>  for patient=<name> at <ip>"
        assert world.service.channels.stats[("record", "scrubbed_by_relay")] == 0
    finally:
        del SOURCE_TYPES["console"]
