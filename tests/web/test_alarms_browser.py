"""Alarms and rules as an engineer and an administrator use them: Debian's Chromium
(headless, via Playwright) against the real portal served by gunicorn over TLS.

An engineer acknowledges an alarm and closes it with a note; an administrator types a
rule with a mistake, reads where the mistake is, fixes it and saves. Screenshots go to
``$OUTLINK_SCREENSHOT_DIR`` like ``test_browser.py``'s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from store.db import make_engine, session_scope
from store.telemetry.alarms import raise_alarm
from telemetry.records import Severity
from tests.web.served import ENGINEER_PASSWORD, ServedPortal, serve_portal
from tests.web.test_browser import browser, page, shot, sign_in, sync_api  # noqa: F401

#: A device of the first customer (Acme), the engineer's scope (see ``served.seed_fleet``).
DEVICE = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedPortal]:
    with serve_portal(tmp_path_factory.mktemp("alarms-browser")) as served:
        engine = make_engine(served.database_url)
        try:
            with session_scope(engine) as session:
                raise_alarm(
                    session,
                    device_id=DEVICE,
                    key="code:E9001",
                    severity=Severity.URGENT,
                    title="E9001: X-ray tube arc detected",
                    ts=time.time(),
                    rule_id=None,
                    now=datetime.now(UTC),
                )
        finally:
            engine.dispose()
        yield served


def test_engineer_acknowledges_and_closes_an_alarm_with_a_note(
    page: Any,  # noqa: F811  (the fixture from test_browser)
    portal: ServedPortal,
) -> None:
    expect = sync_api.expect
    sign_in(page, "eng", ENGINEER_PASSWORD)
    page.goto("/alarms")
    row = page.locator("table.alarms tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("E9001: X-ray tube arc detected")
    expect(row).to_contain_text("acme-ct-00")
    shot(page, "alarms-01-list")
    page.click("text=E9001: X-ray tube arc detected")
    page.click("#acknowledge")
    expect(page.locator(".flash-success")).to_contain_text("Alarm acknowledged")
    expect(page.locator(".page-head")).to_contain_text("acknowledged")
    page.fill("#comment-text", "Called the site: scans paused, engineer on the way.")
    page.click("#add-comment")
    expect(page.locator(".comments")).to_contain_text("scans paused")
    page.fill("#close-note", "Tube replaced; test scans fine.")
    page.click("#close")
    expect(page.locator(".flash-success")).to_contain_text("Alarm closed")
    expect(page.locator(".page-head")).to_contain_text("closed")
    expect(page.locator(".comments li")).to_have_count(2)
    expect(page.locator(".comments")).to_contain_text("Tube replaced; test scans fine.")
    expect(page.locator("#close")).to_have_count(0)
    shot(page, "alarms-02-closed")
    page.goto("/alarms")
    expect(page.locator("table.alarms")).to_contain_text("No alarms.")
    page.click(".filters >> text=closed")
    expect(page.locator("table.alarms tbody tr")).to_contain_text("closed")


def test_admin_saves_a_rule_after_reading_the_syntax_error(
    page: Any,  # noqa: F811  (the fixture from test_browser)
    portal: ServedPortal,
) -> None:
    expect = sync_api.expect
    sign_in(page, "admin", portal.admin_password)
    page.goto("/rules/new")
    page.fill("#name", "Hot CPU")
    page.fill("#text", "when metric cpu.percent > ninety for 5m then alarm warning")
    page.click("#save-rule")
    error = page.locator("#rule-error")
    expect(error).to_contain_text("at column 27: expected a number, got 'ninety'")
    expect(page.locator("#name")).to_have_value("Hot CPU")
    shot(page, "alarms-03-rule-syntax-error")
    page.fill("#text", "when metric cpu.percent > 90 for 5m then alarm warning")
    page.click("#save-rule")
    expect(page.locator(".flash-success")).to_contain_text("Rule 'Hot CPU' saved")
    expect(page.locator("table")).to_contain_text("when metric cpu.percent > 90 for 5m")
    shot(page, "alarms-04-rules")


def test_engineer_asks_an_unreachable_device_for_its_logs(
    page: Any,  # noqa: F811  (the fixture from test_browser)
    portal: ServedPortal,
) -> None:
    """No relay runs here: the request is recorded as failed and said so in plain words
    (the real relay and agent path is ``test_uploads.py``)."""
    expect = sync_api.expect
    sign_in(page, "eng", ENGINEER_PASSWORD)
    page.goto(f"/devices/{DEVICE}")
    section = page.locator("#device-logs")
    expect(section).to_contain_text("No log uploads yet.")
    shot(page, "alarms-05-device")
    section.locator("input[name=source]").fill("app")
    section.locator("button", has_text="Fetch logs").click()
    expect(page.locator(".flash-error")).to_contain_text(
        "Logs not requested: the device is offline (no relay is known)."
    )
    expect(page.locator("table.uploads tbody tr")).to_contain_text("failed")
    shot(page, "alarms-06-logs-offline")
