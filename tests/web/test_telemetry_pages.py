"""The telemetry pages with the Flask test client on a real database: the device page's
section, the chart series endpoint, the events list and the attention page -- each
scoped like the rest of the portal and escaping what agents send."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete, select

from store.portal import Permission, Role, RolePermission
from store.telemetry.alarms import raise_alarm
from store.telemetry.ingest import ingest
from store.telemetry.series import downsample
from telemetry.records import Event, Metrics, Properties, Record, Severity
from tests.web.conftest import Fleet
from web.db import db
from web.telemetry import (
    BadWindow,
    chart_window,
    default_charts,
    describe_metric,
    format_value,
)

#: "Now" of the test running: set per test (`_now`), since the pages read the real clock
#: and a value taken at import would be minutes old by the time a long run gets here.
NOW = datetime.now(UTC).replace(microsecond=0)
HOSTILE = "<img src=x onerror=alert(1)> tube arc"


@pytest.fixture(autouse=True)
def _now() -> None:
    global NOW
    NOW = datetime.now(UTC).replace(microsecond=0)


def seed(app: Flask, device_id: str, records: list[Record], now: datetime | None = None) -> None:
    now = now or NOW
    with app.app_context():
        ingest(db.session, [(device_id, records)], received_at=now)
        downsample(db.session, now=now, limit=10_000)  # every hour at once (the current stays)
        db.session.commit()


def polls(
    hours: float,
    every: timedelta = timedelta(minutes=5),
    seq0: int = 1000,
    end: datetime | None = None,
) -> list[Record]:
    """A metrics record every `every` for the last `hours`, CPU rising 0..99 %."""
    end = end or NOW
    count = int(timedelta(hours=hours) / every)
    return [
        Metrics(
            seq0 + i,
            (end - every * (count - 1 - i)).timestamp(),
            {
                "cpu.percent": float(i % 100),
                "mem.percent": 42.5,
                "disk.percent:/": 71.0,
                "proc.up:scanner": 1.0,
                "agent.spool_records": 3.0,
            },
        )
        for i in range(count)
    ]


def event(
    seq: int,
    severity: Severity,
    code: str = "E100",
    message: str = "door open",
    at: datetime | None = None,
) -> Event:
    return Event(seq, (at or NOW).timestamp(), code, severity, "app", message)


@pytest.fixture
def seeded(app: Flask, fleet: Fleet, users: dict[str, int]) -> Fleet:
    records: list[Record] = [
        *polls(48),
        Properties(1, NOW.timestamp() - 60, {"model": "CT-9000", "serial": "SN<b>1"}),
    ]
    records += [
        event(10, Severity.ROUTINE, "I001", "warm-up done", NOW - timedelta(minutes=9)),
        event(11, Severity.WARNING, "W200", "fan slow", NOW - timedelta(minutes=8)),
        event(12, Severity.URGENT, "E9001", HOSTILE, NOW - timedelta(minutes=7)),
    ]
    seed(app, fleet.device_a1, records)
    seed(app, fleet.device_b1, polls(1, seq0=5000))
    return fleet


# -- pure helpers ------------------------------------------------------------------------


def test_metric_names_read_as_labels_with_units() -> None:
    assert describe_metric("disk.percent:/data") == describe_metric("disk.percent:/data")
    disk = describe_metric("disk.percent:/data")
    assert (disk.label, disk.unit) == ("Disk used (/data)", "%")
    assert describe_metric("device.tube_temp").label == "Device tube temp"
    assert describe_metric("agent.rss_mb").agent
    assert format_value(disk, 71.0) == "71%"
    assert format_value(describe_metric("mem.available_mb"), 1234.56) == "1,235 MB"
    assert format_value(describe_metric("cpu.load1"), 0.4567) == "0.46"
    assert format_value(describe_metric("proc.up:scanner"), 0.0) == "not running"


def test_default_charts_prefer_the_usual_health_metrics() -> None:
    keys = sorted(
        [
            "agent.cpu",
            "cpu.percent",
            "disk.percent:/",
            "disk.percent:/data",
            "mem.percent",
            "net.sent_kbps",
            "temp.c:cpu",
        ]
    )
    assert default_charts(keys) == ["cpu.percent", "mem.percent", "disk.percent:/", "temp.c:cpu"]
    assert default_charts(["agent.cpu", "uptime.h"]) == ["uptime.h"]


@pytest.mark.parametrize(
    "args, error",
    [
        ({"range": "2w"}, "range must be one of"),
        ({"start": "nan", "end": "1"}, "Unix times"),
        ({"start": "abc", "end": "1"}, "Unix times"),
        ({"start": "1700000000"}, "Unix times"),
        ({"start": "100", "end": "200"}, "outside"),
        ({"start": "1700000000", "end": "1700000030"}, "at least a minute"),
        ({"start": "1700000060", "end": "1700000000"}, "at least a minute"),
        ({"start": "1000000000", "end": "1700000000"}, "longer than"),
    ],
)
def test_bad_windows_are_refused_with_a_reason(args: dict[str, str], error: str) -> None:
    with pytest.raises(BadWindow, match=error):
        chart_window(args, NOW)


def test_windows_by_name_and_by_zoom() -> None:
    assert chart_window({}, NOW) == (NOW - timedelta(hours=24), NOW)
    assert chart_window({"range": "1y"}, NOW) == (NOW - timedelta(days=365), NOW)
    start, end = chart_window({"start": "1700000000", "end": "1700003600.5"}, NOW)
    assert (start.timestamp(), end.timestamp()) == (1700000000, 1700003600.5)


# -- device page -------------------------------------------------------------------------


def test_device_page_shows_charts_latest_values_and_events(
    seeded: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    page = client_for("eng").get(f"/devices/{seeded.device_a1}").get_data(as_text=True)
    assert "Telemetry history" in page
    assert f'data-series-url="/api/v1/devices/{seeded.device_a1}/telemetry/series"' in page
    assert page.count("data-chart-box") == 4
    assert '<option value="cpu.percent" selected>CPU (%)</option>' in page
    assert "vendor/uplot/uPlot.iife.min.js" in page and "telemetry.js" in page
    # Latest values: the newest poll, formatted; the agent's own values apart.
    assert '<span class="value-label">Memory used</span><span class="value">42.5%</span>' in page
    assert '<span class="value">running</span>' in page
    assert "Agent health" in page and "Agent spool" in page
    assert "SN&lt;b&gt;1" in page and "SN<b>1" not in page
    # Events, newest first, escaped.
    assert page.index("E9001") < page.index("W200") < page.index("I001")
    assert "&lt;img src=x onerror=alert(1)&gt; tube arc" in page
    assert "<img src=x" not in page
    assert 'badge-sev-urgent">urgent' in page
    assert '{% include "alarms/_device_section.html" ignore missing %}' not in page


def test_device_page_without_telemetry_says_so(
    seeded: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    page = client_for("eng").get(f"/devices/{seeded.device_a2}").get_data(as_text=True)
    assert "No telemetry has arrived from this device yet." in page
    assert "data-chart-box" not in page
    assert "No events from this device." in page


def test_without_telemetry_view_the_section_and_series_are_withheld(
    app: Flask, seeded: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    with app.app_context():
        role = db.session.scalar(select(Role.id).where(Role.name == "analyst"))
        perm = db.session.scalar(select(Permission.id).where(Permission.name == "telemetry.view"))
        db.session.execute(
            delete(RolePermission).where(
                RolePermission.role_id == role, RolePermission.permission_id == perm
            )
        )
        db.session.commit()
    client = client_for("ana")
    page = client.get(f"/devices/{seeded.device_a1}").get_data(as_text=True)
    assert "Identity" in page and "Telemetry history" not in page and "uPlot" not in page
    assert "Needs attention" not in page
    series = client.get(f"/api/v1/devices/{seeded.device_a1}/telemetry/series?metric=cpu.percent")
    assert series.status_code == 403
    assert client.get("/attention").status_code == 403


# -- series ------------------------------------------------------------------------------


def series(client: FlaskClient, device_id: str, **args: str) -> dict:  # type: ignore[type-arg]
    response = client.get(f"/api/v1/devices/{device_id}/telemetry/series", query_string=args)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    body: dict = response.get_json()  # type: ignore[type-arg]
    return body


def test_series_of_a_recent_range_are_raw_samples(
    seeded: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    body = series(client_for("eng"), seeded.device_a1, metric="cpu.percent", range="1h")
    assert (body["metric"], body["label"], body["unit"], body["resolution"]) == (
        "cpu.percent",
        "CPU",
        "%",
        "raw",
    )
    assert body["end"] - body["start"] == pytest.approx(3600, abs=1)
    assert len(body["t"]) == len(body["avg"]) == len(body["min"]) == len(body["max"]) == 12
    assert body["t"] == sorted(body["t"]) and body["count"] == [1] * 12
    # The last poll (i = 575, at NOW) was 75 %.
    assert body["avg"][-1] == 75.0


def test_series_are_bucketed_to_the_points_asked_for(
    seeded: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    body = series(
        client_for("eng"), seeded.device_a1, metric="cpu.percent", range="24h", points="48"
    )
    assert len(body["t"]) <= 48 and sum(body["count"]) == 288
    assert all(
        lo <= avg <= hi for lo, avg, hi in zip(body["min"], body["avg"], body["max"], strict=True)
    )


def test_long_ranges_read_hourly_aggregates(
    seeded: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    client = client_for("eng")
    body = series(client, seeded.device_a1, metric="mem.percent", range="30d", points="2000")
    assert (body["resolution"], body["bucket"]) == ("hourly", 3600)
    assert set(body["avg"]) == {42.5} and 45 <= len(body["t"]) <= 49  # 48 h of data
    wide = series(client, seeded.device_a1, metric="mem.percent", range="1y")
    assert wide["bucket"] == pytest.approx(365 * 86400 / 500) and len(wide["t"]) <= 4


def test_zoom_reads_an_explicit_window(
    seeded: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    end = NOW - timedelta(hours=10)
    body = series(
        client_for("eng"),
        seeded.device_a1,
        metric="cpu.percent",
        start=str((end - timedelta(minutes=30)).timestamp()),
        end=str(end.timestamp()),
    )
    assert body["resolution"] == "raw" and len(body["t"]) == 6
    assert all(end.timestamp() - 1800 <= t < end.timestamp() for t in body["t"])


def test_a_metric_the_device_never_sent_is_an_empty_series(
    seeded: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    body = series(client_for("eng"), seeded.device_a1, metric="temp.c:gpu")
    assert body["t"] == [] and body["label"] == "Temperature (gpu)"


@pytest.mark.parametrize(
    "query, message",
    [
        ("", "metric must be"),
        ("metric=%3Cscript%3E", "metric must be"),
        ("metric=secret.value", "metric must be"),
        ("metric=cpu.percent&range=forever", "range must be one of"),
        ("metric=cpu.percent&start=1&end=2", "outside the stored history"),
        ("metric=cpu.percent&start=1e308&end=1700000000", "Unix times in seconds"),
        ("metric=cpu.percent&start=99999999999999999999&end=1", "Unix times in seconds"),
        ("metric=cpu.percent&start=%C2%B9%E2%81%B7&end=1700000000", "Unix times in seconds"),
    ],
)
def test_bad_series_requests_get_a_clear_400(
    seeded: Fleet, client_for: Callable[[str], FlaskClient], query: str, message: str
) -> None:
    response = client_for("eng").get(f"/api/v1/devices/{seeded.device_a1}/telemetry/series?{query}")
    assert response.status_code == 400
    assert message in response.get_json()["message"]
    assert "<script>" not in response.get_data(as_text=True)


def test_devices_out_of_scope_are_not_found(
    seeded: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    eng, contact = client_for("eng"), client_for("contact")
    for client, device in (
        (eng, seeded.device_b1),
        (contact, seeded.device_a2),
        (eng, "no-such-device"),
        (eng, "x" * 400),
    ):
        response = client.get(f"/api/v1/devices/{device}/telemetry/series?metric=cpu.percent")
        assert response.status_code == 404
        assert response.is_json
        assert client.get(f"/devices/{device}/events").status_code == 404
    assert series(client_for("root"), seeded.device_b1, metric="cpu.percent")["t"]


# -- events ------------------------------------------------------------------------------


def test_events_page_filters_by_severity_and_code(
    seeded: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    client = client_for("ana")
    base = f"/devices/{seeded.device_a1}/events"
    everything = client.get(base).get_data(as_text=True)
    assert all(code in everything for code in ("E9001", "W200", "I001"))
    warning = client.get(base + "?severity=warning").get_data(as_text=True)
    assert "W200" in warning and "E9001" in warning and "I001" not in warning
    assert '<option value="warning" selected>' in warning
    urgent = client.get(base + "?severity=urgent").get_data(as_text=True)
    assert "E9001" in urgent and "W200" not in urgent
    assert "&lt;img src=x" in urgent and "<img src=x" not in urgent
    by_code = client.get(base + "?code=W2").get_data(as_text=True)
    assert "W200" in by_code and "E9001" not in by_code
    assert "No events match." in client.get(base + "?code=%25").get_data(as_text=True)
    assert client.get(base + "?severity=bogus&page=-3").status_code == 200


def test_events_are_paged_in_time_order_whatever_order_they_arrived(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    # 30 recent events arrive first; then a backlog of 40 older ones (an outage resent).
    recent = [
        event(100 + i, Severity.WARNING, f"R{i:03d}", at=NOW - timedelta(minutes=i))
        for i in range(30)
    ]
    backlog = [
        event(200 + i, Severity.WARNING, f"B{i:03d}", at=NOW - timedelta(hours=5, minutes=i))
        for i in range(40)
    ]
    seed(app, fleet.device_a1, list(recent))
    seed(app, fleet.device_a1, list(backlog))
    client = client_for("eng")
    first = client.get(f"/devices/{fleet.device_a1}/events").get_data(as_text=True)
    second = client.get(f"/devices/{fleet.device_a1}/events?page=2").get_data(as_text=True)
    assert "1\u201350 of 70" in first and "51\u201370 of 70" in second
    assert "R000" in first and "R029" in first and "B019" in first and "B020" not in first
    assert "B020" in second and "B039" in second
    assert not any(f"R{i:03d}" in second for i in range(30))  # ("R0" alone is in CSRF tokens)
    assert first.index("R029") < first.index("B000")


# -- attention -------------------------------------------------------------------------------


def test_attention_lists_alarms_urgent_events_and_offline_worst_first(
    app: Flask, fleet: Fleet, users: dict[str, int], client_for: Callable[[str], FlaskClient]
) -> None:
    seed(app, fleet.device_a1, [event(1, Severity.URGENT, "E9001", HOSTILE)])
    with app.app_context():
        for device_id in (fleet.device_a1, fleet.device_b1):
            raise_alarm(
                db.session,
                device_id=device_id,
                key="code:E9001",
                severity=Severity.URGENT,
                title="E9001",
                ts=NOW.timestamp(),
                rule_id=None,
                now=NOW,
            )
        db.session.commit()
    page = client_for("eng").get("/attention").get_data(as_text=True)
    # a1: urgent alarm + urgent event; a2: offline (a warning). b1 is another customer's.
    assert page.index("acme-ct-01") < page.index("acme-mr-02")
    assert "globex" not in page
    assert "1 active alarm (urgent)" in page and "1 urgent event" in page
    assert "offline, last seen" in page
    assert 'class="nav-attention' not in page and "Needs attention</a>" in page
    assert f"/devices/{fleet.device_a1}/events?severity=urgent" in page
    everything = client_for("root").get("/attention").get_data(as_text=True)
    assert "globex-xr-01" in everything
    contact = client_for("contact").get("/attention").get_data(as_text=True)
    assert "acme-ct-01" in contact and "acme-mr-02" not in contact


def test_attention_page_when_all_is_well(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    page = client_for("contact").get("/attention").get_data(as_text=True)
    assert "Nothing needs attention" in page
