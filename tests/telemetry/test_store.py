"""Telemetry storage on SQLite and PostgreSQL: idempotent ingestion, history and
downsampling, retention, alarms, rules, notification decisions, log uploads."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from pki.fleet import create_device, ensure_site
from store.db import session_scope
from store.models import Device
from store.telemetry.alarms import (
    AlarmStateError,
    acknowledge_alarm,
    alarm_comments,
    close_alarm,
    comment_alarm,
    fleet_attention,
    list_alarms,
    raise_alarm,
)
from store.telemetry.events import TelemetryEvent, events_query, list_events, urgent_events
from store.telemetry.ingest import ingest
from store.telemetry.notifications import (
    NOTIFY_DUPLICATE,
    NOTIFY_PENDING,
    NOTIFY_RATE_LIMITED,
    decide_notification,
    finish_notification,
)
from store.telemetry.records import TelemetryRecord, high_seq, latest_values, metric_names
from store.telemetry.retention import prune
from store.telemetry.rules import create_rule, delete_rule, list_rules, update_rule
from store.telemetry.series import TelemetryHourly, TelemetryRollupPending, downsample, history
from store.telemetry.uploads import (
    downloadable_upload,
    list_log_uploads,
    refuse_log_upload,
    request_log_upload,
)
from telemetry.records import Event, Metrics, Properties, Severity
from telemetry.rules import RuleSyntaxError
from tests.conftest import UNIT

NOW = datetime(2026, 6, 1, 12, 30, tzinfo=UTC)
T = NOW.timestamp()


@pytest.fixture
def devices(db_engine: Engine) -> tuple[str, str]:
    with session_scope(db_engine) as session:
        a = create_device(session, ensure_site(session, "acme", "lab")).id
        b = create_device(session, ensure_site(session, "other", "x")).id
    return a, b


def store(engine: Engine, *batches: tuple[str, list]) -> list:  # type: ignore[type-arg]
    with session_scope(engine) as session:
        return ingest(session, list(batches), received_at=NOW)


def test_ingestion_is_idempotent_on_device_and_seq(db_engine: Engine, devices: tuple) -> None:  # type: ignore[type-arg]
    a, b = devices
    records = [
        Metrics(1, T, {"cpu.percent": 5.0}),
        Event(2, T, "E9001", Severity.URGENT, "app", "tube hot"),
        Properties(3, T, {"model": "CT-9000"}),
    ]
    first, other = store(db_engine, (a, records), (b, records[:1]))
    assert (len(first.new), first.duplicates, len(other.new)) == (3, 0, 1)
    # A resend, and a batch repeating itself and an earlier batch of the same flush.
    again, twice = store(db_engine, (a, records), (a, [Metrics(4, T, {"cpu.percent": 1.0})] * 2))
    assert (len(again.new), again.duplicates) == (0, 3)
    assert (len(twice.new), twice.duplicates) == (1, 1)
    with session_scope(db_engine) as session:
        assert session.scalar(select(func.count()).select_from(TelemetryRecord)) == 5
        assert session.scalar(select(func.count()).select_from(TelemetryEvent)) == 1
        assert session.get(Device, a).model == "CT-9000"  # type: ignore[union-attr]
        assert high_seq(session, a) == 4
        latest = latest_values(session, a)
        assert latest.properties == {"model": "CT-9000"}
        assert latest.values == {"cpu.percent": 5.0} or latest.values == {"cpu.percent": 1.0}
        assert metric_names(session, a) == ["cpu.percent"]
        (event,) = list_events(session, device_id=a, min_severity=Severity.URGENT)
        assert (event.code, event.message) == ("E9001", "tube hot")
        assert list_events(session, device_id=b) == []


def test_older_properties_never_replace_newer_ones(db_engine: Engine, devices: tuple) -> None:  # type: ignore[type-arg]
    a, _ = devices
    store(db_engine, (a, [Properties(10, T, {"model": "new"})]))
    store(db_engine, (a, [Properties(5, T - 60, {"model": "old"})]))
    with session_scope(db_engine) as session:
        assert latest_values(session, a).properties == {"model": "new"}


def test_history_raw_then_hourly_after_downsampling(db_engine: Engine, devices: tuple) -> None:  # type: ignore[type-arg]
    a, _ = devices
    start = NOW - timedelta(hours=2, minutes=30)  # 10:00
    polls = [
        Metrics(i + 1, (start + timedelta(minutes=i)).timestamp(), {"cpu.percent": float(i % 60)})
        for i in range(150)
    ]
    store(db_engine, (a, polls))
    with session_scope(db_engine) as session:
        raw = history(session, a, "cpu.percent", start, NOW, max_points=500, now=NOW)
        assert raw.resolution == "raw" and len(raw.points) == 150
        merged = history(session, a, "cpu.percent", start, NOW, max_points=15, now=NOW)
        assert len(merged.points) == 15 and merged.points[0].count == 10
        assert merged.points[0].min == 0 and merged.points[0].max == 9
        assert downsample(session, now=NOW) == 2  # 10:00, 11:00 done; the current 12:00 too
    with session_scope(db_engine) as session:
        # The finished hours are done; the current one stays pending.
        assert session.scalar(select(func.count()).select_from(TelemetryRollupPending)) == 1
        rows = session.scalars(select(TelemetryHourly).order_by(TelemetryHourly.hour)).all()
        assert [(r.count, r.min, r.max, r.sum) for r in rows][:2] == [
            (60, 0, 59, 1770),
            (60, 0, 59, 1770),
        ]
        long = history(session, a, "cpu.percent", NOW - timedelta(days=10), NOW, now=NOW)
        assert long.resolution == "hourly"
        assert [p.avg for p in long.points][:2] == [29.5, 29.5]
    # A late sample marks its (finished) hour again.
    store(db_engine, (a, [Metrics(999, start.timestamp() + 30, {"cpu.percent": 100.0})]))
    with session_scope(db_engine) as session:
        downsample(session, now=NOW)
        first = session.scalars(select(TelemetryHourly).order_by(TelemetryHourly.hour)).first()
        assert first is not None and (first.count, first.max) == (61, 100)


def test_retention_prunes_raw_after_30_days_and_keeps_hourly(
    db_engine: Engine,
    devices: tuple,  # type: ignore[type-arg]
) -> None:
    a, _ = devices
    old = (NOW - timedelta(days=31)).timestamp()
    store(
        db_engine,
        (
            a,
            [
                Metrics(1, old, {"cpu.percent": 1.0}),
                Event(2, old, "E1", Severity.WARNING, "app", "x"),
                Metrics(3, T, {"cpu.percent": 2.0}),
            ],
        ),
    )
    with session_scope(db_engine) as session:
        downsample(session, now=NOW)
        report = prune(session, now=NOW)
        assert (report.records, report.events, report.hourly) == (2, 0, 0)  # ledger rows
        assert session.scalar(select(func.count()).select_from(TelemetryHourly)) == 2
        report = prune(session, now=NOW + timedelta(days=800))
        assert report.events == 1 and report.hourly == 2


def test_event_queries_filter_order_and_scope(db_engine: Engine, devices: tuple) -> None:  # type: ignore[type-arg]
    a, b = devices
    day = timedelta(days=1).total_seconds()
    store(
        db_engine,
        (
            a,
            [
                Event(1, T - 60, "E9001", Severity.URGENT, "app", "tube hot"),
                Event(2, T - 2 * day, "E9002", Severity.URGENT, "app", "old"),
                Event(3, T - 30, "W100", Severity.WARNING, "app", "fan"),
                # A backlog resent late: the highest seq (and id), the oldest time.
                Event(4, T - 3600, "E9_x", Severity.URGENT, "app", "late"),
            ],
        ),
        (b, [Event(1, T - 10, "E9003", Severity.URGENT, "app", "other")]),
    )
    with session_scope(db_engine) as session:
        stmt = events_query(device_id=a, min_severity=Severity.URGENT, code="E9")
        assert [e.message for e in session.scalars(stmt)] == ["tube hot", "late", "old"]
        # A prefix is literal: "_" matches an underscore only.
        stmt = events_query(device_id=a, code="E9_")
        assert [e.message for e in session.scalars(stmt)] == ["late"]
        assert [e.message for e in list_events(session, device_id=a, limit=2)] == [
            "fan",
            "tube hot",
        ]
        since = NOW - timedelta(days=1)
        everyone = Device.id.is_not(None)
        urgent = urgent_events(session, devices=everyone, since=since, limit=10)
        assert list(urgent) == [b, a]  # the most recent urgent event first
        assert urgent[a] == (2, NOW - timedelta(seconds=60))
        assert urgent_events(session, devices=everyone, since=since, limit=1).keys() == {b}
        assert urgent_events(session, devices=Device.id == a, since=since, limit=10) == {
            a: (2, NOW - timedelta(seconds=60))
        }


def test_alarms_open_bump_and_move_through_their_states(
    db_engine: Engine,
    devices: tuple,  # type: ignore[type-arg]
) -> None:
    a, b = devices
    with session_scope(db_engine) as session:
        alarm, opened = raise_alarm(
            session,
            device_id=a,
            key="code:E9001",
            severity=Severity.WARNING,
            title="E9001: tube hot",
            ts=T,
            rule_id=None,
            now=NOW,
        )
        assert opened
        again, opened = raise_alarm(
            session,
            device_id=a,
            key="code:E9001",
            severity=Severity.URGENT,
            title="x",
            ts=T + 5,
            rule_id=None,
            now=NOW,
        )
        assert not opened and again.id == alarm.id
        assert (again.count, again.severity) == (2, Severity.URGENT)
        raise_alarm(
            session,
            device_id=b,
            key="rule:1",
            severity=Severity.ROUTINE,
            title="b",
            ts=T,
            rule_id=None,
            now=NOW + timedelta(seconds=1),
        )
        acknowledge_alarm(session, alarm, actor="eve")
        with pytest.raises(AlarmStateError):
            acknowledge_alarm(session, alarm, actor="eve")
        comment_alarm(session, alarm, actor="eve", text=" replacing the tube ")
        with pytest.raises(ValueError, match="empty"):
            comment_alarm(session, alarm, actor="eve", text="  ")
        rows = list_alarms(session)
        assert [(r.alarm.device_id, r.customer, r.comments) for r in rows] == [
            (a, "acme", 1),
            (b, "other", 0),
        ]
        scoped = list_alarms(
            session,
            devices=Device.customer_id.in_(select(Device.customer_id).where(Device.id == b)),
        )
        assert [r.alarm.device_id for r in scoped] == [b]
        attention = fleet_attention(session)
        assert [(x.device_id, x.max_severity) for x in attention] == [
            (a, Severity.URGENT),
            (b, Severity.ROUTINE),
        ]
        close_alarm(session, alarm, actor="eve")
        with pytest.raises(AlarmStateError):
            close_alarm(session, alarm, actor="eve")
        assert [c.text for c in alarm_comments(session, alarm.id)] == ["replacing the tube"]
        _, reopened = raise_alarm(
            session,
            device_id=a,
            key="code:E9001",
            severity=Severity.URGENT,
            title="again",
            ts=T + 60,
            rule_id=None,
            now=NOW,
        )
        assert reopened  # a closed alarm is history; the problem is new


def test_rules_are_validated_when_saved(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        rule = create_rule(session, name="tube", text="when code E9* then alarm", actor="ann")
        with pytest.raises(RuleSyntaxError, match="column 11"):
            create_rule(session, name="bad", text="when code then alarm", actor="ann")
        with pytest.raises(RuleSyntaxError):
            update_rule(
                session,
                rule,
                name="tube",
                text="when metric x > 1 then alarm",
                enabled=True,
                actor="ann",
            )
        update_rule(
            session,
            rule,
            name="tube!",
            text="when code E9* then alarm urgent",
            enabled=False,
            actor="bob",
        )
        assert [(r.name, r.enabled, r.updated_by) for r in list_rules(session)] == [
            ("tube!", False, "bob")
        ]
        delete_rule(session, rule)
        session.flush()
        assert list_rules(session) == []


def test_notifications_are_deduplicated_and_rate_limited(db_engine: Engine) -> None:
    def decide(key: str, target: str, at: datetime) -> str:
        with session_scope(db_engine) as session:
            row = decide_notification(
                session,
                channel="email",
                target=target,
                dedup_key=key,
                alarm_id=None,
                rule_id=None,
                device_id=None,
                now=at,
                dedup_window=timedelta(minutes=30),
                rate_limit=3,
                rate_window=timedelta(hours=1),
            )
            status = row.status
            if status == NOTIFY_PENDING:
                finish_notification(session, row.id, ok=True, attempts=1, error=None, now=at)
            return status

    assert decide("d:code:E1", "a@x.example", NOW) == NOTIFY_PENDING
    assert decide("d:code:E1", "a@x.example", NOW + timedelta(minutes=5)) == NOTIFY_DUPLICATE
    assert decide("d:code:E1", "b@x.example", NOW) == NOTIFY_PENDING  # another target
    assert decide("d:code:E2", "a@x.example", NOW) == NOTIFY_PENDING
    assert decide("d:code:E3", "a@x.example", NOW) == NOTIFY_PENDING
    assert decide("d:code:E4", "a@x.example", NOW) == NOTIFY_RATE_LIMITED
    assert decide("d:code:E1", "a@x.example", NOW + timedelta(minutes=31)) == NOTIFY_RATE_LIMITED
    assert decide("d:code:E1", "a@x.example", NOW + timedelta(minutes=61)) == NOTIFY_PENDING


def test_log_upload_requests(db_engine: Engine, devices: tuple) -> None:  # type: ignore[type-arg]
    a, b = devices
    with session_scope(db_engine) as session:
        upload, instruction = request_log_upload(
            session, device_id=a, source="app", requested_by="eve"
        )
        assert instruction == {"action": "upload_logs", "upload_id": upload.id, "source": "app"}
        assert downloadable_upload(session, upload.id, a) is None  # not complete yet
        refuse_log_upload(session, upload.id, "forbidden_path")
    with session_scope(db_engine) as session:
        (row,) = list_log_uploads(session, a)
        assert (row.state, row.error, row.requested_by) == ("refused", "forbidden_path", "eve")
        assert list_log_uploads(session, b) == []


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_relays_deciding_one_notice_at_once_send_it_once(db_engine: Engine) -> None:
    """The second decider waits for the first's commit, then sees a duplicate."""

    def decide(session: Session) -> str:
        return decide_notification(
            session,
            channel="webhook",
            target="https://hooks.example/x",
            dedup_key="d:E1",
            alarm_id=None,
            rule_id=None,
            device_id=None,
            now=NOW,
            dedup_window=timedelta(minutes=30),
            rate_limit=10,
            rate_window=timedelta(hours=1),
        ).status

    with ThreadPoolExecutor(1) as pool, session_scope(db_engine) as first:
        assert decide(first) == NOTIFY_PENDING  # not committed yet
        second = pool.submit(lambda: _decide_in_own_session(db_engine, decide))
        deadline = time.monotonic() + 10 * UNIT
        while not _someone_waits_for_an_advisory_lock(db_engine):
            assert not second.done(), f"decided without waiting: {second.result()}"
            assert time.monotonic() < deadline, "the second decider never waited"
            time.sleep(0.01)  # polling a server-side state: there is no event to wait on
        first.commit()
        assert second.result(timeout=10 * UNIT) == NOTIFY_DUPLICATE


def _decide_in_own_session(engine: Engine, decide: Callable[[Session], str]) -> str:
    with session_scope(engine) as session:
        return decide(session)


def _someone_waits_for_an_advisory_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.scalar(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        )
    return bool(waiting)
