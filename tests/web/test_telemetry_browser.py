"""The telemetry pages in a real browser: Debian's Chromium (headless, via Playwright)
against the portal served by gunicorn over TLS, with a week of telemetry in its database.

The charts must be drawn (uPlot canvases with points), follow the range buttons and
drag-to-zoom, and the page must run under the portal's CSP without a violation.
Screenshots go where ``tests/web/test_browser.py`` puts them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from store.db import make_engine, session_scope
from store.telemetry.alarms import raise_alarm
from store.telemetry.ingest import ingest
from store.telemetry.series import downsample
from telemetry.records import Event, Metrics, Properties, Record, Severity
from tests.web.served import ServedPortal, serve_portal
from tests.web.test_browser import TIMEOUT_MS, browser, shot, sign_in, sync_api  # noqa: F401

#: The first device ``serve_portal`` seeds (Acme, North Campus, online).
DEVICE = "00000000-0000-4000-8000-000000000000"
HOSTILE = "<img src=x onerror=alert(1)> tube arc at 140 kV"
EVERY = timedelta(minutes=5)
DAYS = 8


def telemetry(now: datetime) -> list[Record]:
    """Eight days of polls with a daily rhythm, a two-hour outage, and some events."""
    records: list[Record] = [
        Properties(
            1,
            now.timestamp(),
            {"model": "CT Scanner 9000", "serial": "CT9-004711", "software_version": "4.2.1"},
        )
    ]
    count = int(timedelta(days=DAYS) / EVERY)
    for i in range(count):
        at = now - EVERY * (count - 1 - i)
        if timedelta(hours=30) <= now - at < timedelta(hours=32):
            continue  # the device was off
        day = 2 * math.pi * (at.timestamp() % 86400) / 86400
        records.append(
            Metrics(
                1000 + i,
                at.timestamp(),
                {
                    "cpu.percent": round(35 + 25 * math.sin(day) + 8 * math.sin(i / 3.0), 1),
                    "mem.percent": round(58 + 6 * math.sin(day / 2) + i / count * 4, 1),
                    "disk.percent:/": round(61 + 9 * i / count, 2),
                    "temp.c:gantry": round(41 + 4 * math.sin(day + 1), 1),
                    "proc.up:scanner": 1.0,
                    "agent.rss_mb": 31.0,
                },
            )
        )
    events = [
        ("I0001", Severity.ROUTINE, "warm-up complete", 300),
        ("W2103", Severity.WARNING, "cooling fan below nominal speed", 120),
        ("E9004", Severity.URGENT, HOSTILE, 25),
        ("I0002", Severity.ROUTINE, "calibration check passed", 10),
    ]
    for n, (code, severity, message, minutes) in enumerate(events):
        records.append(
            Event(
                10 + n,
                (now - timedelta(minutes=minutes)).timestamp(),
                code,
                severity,
                "app",
                message,
            )
        )
    return records


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedPortal]:
    with serve_portal(tmp_path_factory.mktemp("telemetry-browser")) as served:
        now = datetime.now(UTC)
        engine = make_engine(served.database_url)
        try:
            with session_scope(engine) as session:
                ingest(session, [(DEVICE, telemetry(now))], received_at=now)
                downsample(session, now=now, limit=10_000)
                raise_alarm(
                    session,
                    device_id=DEVICE,
                    key="code:E9004",
                    severity=Severity.URGENT,
                    title="E9004 tube arc",
                    ts=now.timestamp() - 1500,
                    rule_id=None,
                    now=now,
                )
        finally:
            engine.dispose()
        yield served


@pytest.fixture
def page(browser: Any, portal: ServedPortal) -> Iterator[Any]:  # noqa: F811
    # ignore_https_errors: the staff CA is not in this throwaway profile (see test_browser.py).
    context = browser.new_context(
        ignore_https_errors=True, base_url=portal.base_url, viewport={"width": 1360, "height": 900}
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    # Console errors (a CSP violation is one) and failed requests; browsers ask for a
    # favicon the portal does not have.
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on(
        "response",
        lambda r: (
            problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: problems.append("dialog: " + d.message))
    page.problems = problems
    yield page
    context.close()


def chart_points(page: Any) -> list[int]:
    points: list[int] = page.eval_on_selector_all(
        "[data-chart]", "els => els.map(e => Number(e.dataset.points))"
    )
    return points


def inked_pixels(page: Any) -> int:
    """Pixels of the first chart's canvas that are not blank (the plot was drawn)."""
    inked: int = page.evaluate("""() => {
        const c = document.querySelector("[data-chart] canvas");
        const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
        return n;
    }""")
    return inked


def wait_for_charts(page: Any, window: str) -> None:
    expect = sync_api.expect
    expect(page.locator(f"[data-telemetry][data-window='{window}']")).to_have_count(1)
    expect(page.locator("[data-chart][data-state='ready']")).to_have_count(4)


def test_device_page_draws_history_and_follows_ranges_and_zoom(
    page: Any, portal: ServedPortal
) -> None:
    expect = sync_api.expect
    sign_in(page, "admin", portal.admin_password)
    page.goto(f"/devices/{DEVICE}")
    wait_for_charts(page, "24h")
    day = chart_points(page)
    assert all(n > 200 for n in day), day  # a day of 5-minute polls, minus the outage
    assert inked_pixels(page) > 1000
    metrics = page.eval_on_selector_all("[data-chart]", "els => els.map(e => e.dataset.series)")
    assert metrics == ["cpu.percent", "mem.percent", "disk.percent:/", "temp.c:gantry"]
    expect(page.locator("#latest-values")).to_contain_text("Memory used")
    expect(page.locator("#latest-values")).to_contain_text("CT9-004711")
    events = page.locator("#recent-events")
    expect(events).to_contain_text("W2103")
    expect(events).to_contain_text(HOSTILE)  # shown as text, not markup
    assert page.locator("#recent-events img").count() == 0
    shot(page, "20-device-telemetry")

    page.click("[data-range-button='7d']")
    wait_for_charts(page, "7d")
    expect(page.locator("[data-resolution]").first).to_have_text(re.compile("hourly"))
    week = chart_points(page)
    assert all(100 <= n <= 24 * 7 for n in week), week
    shot(page, "21-device-telemetry-7d")

    box = page.locator("[data-chart] .u-over").first.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.80, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.95, y, steps=8)
    page.mouse.up()
    wait_for_charts(page, "zoom")
    expect(page.locator("[data-range-label]")).to_contain_text("Zoomed")
    expect(page.locator("[data-zoom-reset]")).to_be_visible()
    expect(page.locator("[data-resolution]").first).to_have_text("samples")
    assert all(n > 50 for n in chart_points(page))  # about a day at full resolution
    page.click("[data-zoom-reset]")
    wait_for_charts(page, "7d")

    page.select_option("select[data-metric] >> nth=3", "proc.up:scanner")
    expect(page.locator("[data-chart] >> nth=3")).to_have_attribute(
        "data-series", "proc.up:scanner"
    )
    assert page.problems == []  # no CSP violation, no script error


def test_attention_page_and_events_list(page: Any, portal: ServedPortal) -> None:
    expect = sync_api.expect
    sign_in(page, "admin", portal.admin_password)
    page.click("nav >> text=Needs attention")
    expect(page.locator("h1")).to_have_text("Needs attention now")
    first = page.locator("table tbody tr").first
    expect(first).to_contain_text("acme-ct-00")
    expect(first).to_contain_text("1 active alarm (urgent)")
    expect(page.locator("table tbody")).to_contain_text("offline")
    shot(page, "22-attention")
    first.locator("a", has_text="urgent event").click()
    expect(page.locator("h1")).to_have_text("Events")
    expect(page.locator("table tbody tr")).to_have_count(1)
    # The select submits on change through portal.js (deferred): the h1 can be there
    # before the listener is, and a change then is lost. "load" comes after it.
    page.wait_for_load_state("load")
    page.select_option("select[name=severity]", "routine")
    expect(page.locator("table tbody tr")).to_have_count(4)
    shot(page, "23-events")
    assert page.problems == []
