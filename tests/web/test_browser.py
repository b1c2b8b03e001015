"""The portal as a person uses it: Debian's Chromium (headless, via Playwright) against the
real app served by gunicorn over TLS on 127.0.0.1.

Screenshots of the main pages go to ``$OUTLINK_SCREENSHOT_DIR`` (default: a folder
in the system temp dir, never the repository) for people to look at.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from tests.conftest import UNIT
from tests.web.served import ENGINEER_PASSWORD, REPO, ServedPortal, serve_portal

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

SHOTS = Path(
    os.environ.get("OUTLINK_SCREENSHOT_DIR", Path(tempfile.gettempdir()) / "outlink-portal-screens")
)
TIMEOUT_MS = 15_000 * UNIT
LOCKOUT_AFTER = 4


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedPortal]:
    with serve_portal(
        tmp_path_factory.mktemp("browser"), login_max_failures=LOCKOUT_AFTER
    ) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # Assertions wait as long as actions do (Playwright's own 5 s is not scaled by UNIT).
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object, portal: ServedPortal) -> Iterator[object]:
    # ignore_https_errors: the portal's certificate comes from our own staff CA, which this
    # throwaway browser profile does not trust; test_serve.py verifies that chain properly.
    context = browser.new_context(
        ignore_https_errors=True,
        base_url=portal.base_url,  # type: ignore[attr-defined]
        viewport={"width": 1360, "height": 860},
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def sign_in(page: object, username: str, password: str) -> None:
    page.goto("/login")  # type: ignore[attr-defined]
    page.fill("#username", username)  # type: ignore[attr-defined]
    page.fill("#password", password)  # type: ignore[attr-defined]
    page.click("button:has-text('Sign in')")  # type: ignore[attr-defined]


def test_admin_signs_in_and_sees_the_fleet(page: object, portal: ServedPortal) -> None:
    expect = sync_api.expect
    page.goto("/")  # type: ignore[attr-defined]
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    shot(page, "01-login")
    sign_in(page, "admin", portal.admin_password)
    expect(page.locator("h1")).to_have_text("Fleet overview")
    expect(page.locator(".stat-online .stat-value")).to_have_text("12")
    expect(page.locator("table")).to_contain_text("Globex Imaging")
    shot(page, "02-overview")
    page.click("nav >> text=Devices")  # type: ignore[attr-defined]
    expect(page.locator("table tbody tr")).to_have_count(24)
    page.select_option("select[name=status]", "online")  # type: ignore[attr-defined]
    page.click("button:has-text('Filter')")  # type: ignore[attr-defined]  (if JS was not ready)
    expect(page.locator("table tbody tr")).to_have_count(12)
    shot(page, "03-devices-online")
    page.click("table tbody tr >> nth=0 >> a")  # type: ignore[attr-defined]
    expect(page.locator("h2", has_text="Identity")).to_be_visible()
    expect(page.locator("button", has_text="Revoke device")).to_be_visible()
    shot(page, "04-device")


def test_failed_logins_lead_to_lockout(page: object, portal: ServedPortal) -> None:
    expect = sync_api.expect
    for _ in range(LOCKOUT_AFTER):
        sign_in(page, "eng", "not my password at all")
        expect(page.locator(".flash-error")).to_have_text("Invalid username or password.")
    sign_in(page, "eng", ENGINEER_PASSWORD)  # the right password, but the account is locked
    expect(page.locator(".flash-error")).to_have_text("Invalid username or password.")
    expect(page).to_have_url(re.compile(r"/login$"))
    shot(page, "05-locked")


def test_engineer_sees_only_own_customer(page: object, portal: ServedPortal) -> None:
    from sqlalchemy import text

    from store.db import make_engine

    engine = make_engine(portal.database_url)  # the lockout test locked eng: lift it
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM login_throttle"))
    engine.dispose()
    expect = sync_api.expect
    sign_in(page, "eng", ENGINEER_PASSWORD)
    expect(page.locator("h1")).to_have_text("Fleet overview")
    expect(page.locator("table")).to_contain_text("Acme Hospital")
    expect(page.locator("table")).not_to_contain_text("Globex")
    page.click("nav >> text=Customers")  # type: ignore[attr-defined]
    expect(page.locator("table tbody tr")).to_have_count(1)
    page.click("nav >> text=Devices")  # type: ignore[attr-defined]
    expect(page.locator("table tbody tr")).to_have_count(8)
    shot(page, "06-engineer-devices")
    expect(page.locator("nav")).not_to_contain_text("Users")
    expect(page.locator("nav")).not_to_contain_text("Audit")


def test_admin_creates_user_and_enrolment_token(page: object, portal: ServedPortal) -> None:
    expect = sync_api.expect
    sign_in(page, "admin", portal.admin_password)
    page.click("nav >> text=Users")  # type: ignore[attr-defined]
    page.click("text=New user")  # type: ignore[attr-defined]
    page.fill("#username", "sam")  # type: ignore[attr-defined]
    page.fill("#display_name", "Sam Service")  # type: ignore[attr-defined]
    page.select_option("#role", "service_engineer")  # type: ignore[attr-defined]
    page.select_option("#customers", label="Globex Imaging")  # type: ignore[attr-defined]
    shot(page, "07-new-user-form")
    page.click("button:has-text('Create user')")  # type: ignore[attr-defined]
    expect(page.locator("h1")).to_have_text("User created")
    password = page.locator("#one-time-password").inner_text()  # type: ignore[attr-defined]
    assert len(password) >= 16
    shot(page, "08-user-created")
    page.click("nav >> text=Enrolment")  # type: ignore[attr-defined]
    page.select_option("#site", label="Globex Imaging / North Campus")  # type: ignore[attr-defined]
    page.fill("#note", "CT room 4")  # type: ignore[attr-defined]
    page.click("button:has-text('Create token')")  # type: ignore[attr-defined]
    expect(page.locator("#token-secret")).to_contain_text("olk_")
    shot(page, "09-token-created")
    page.click("text=Done")  # type: ignore[attr-defined]
    expect(page.locator("table")).to_contain_text("CT room 4")
    expect(page.locator("table")).to_contain_text("active")
    shot(page, "10-tokens")
    page.click("text=Users")  # type: ignore[attr-defined]
    expect(page.locator("table")).to_contain_text("sam")
    shot(page, "11-users")


def test_admin_reads_and_filters_the_audit_trail(page: object, portal: ServedPortal) -> None:
    expect = sync_api.expect
    sign_in(page, "admin", portal.admin_password)
    page.click("nav >> text=Audit")  # type: ignore[attr-defined]
    expect(page.locator("table.audit")).to_contain_text("auth.login")
    page.fill("input[name=kind]", "auth.lockout")  # type: ignore[attr-defined]
    page.click("button:has-text('Filter')")  # type: ignore[attr-defined]
    rows = page.locator("table.audit tbody tr")  # type: ignore[attr-defined]
    expect(rows.first).to_contain_text("auth.lockout")
    expect(rows.first).to_contain_text("eng")
    page.fill("input[name=kind]", "auth.login")  # type: ignore[attr-defined]
    page.select_option("select[name=outcome]", "failure")  # type: ignore[attr-defined]
    page.click("button:has-text('Filter')")  # type: ignore[attr-defined]
    expect(rows).to_have_count(LOCKOUT_AFTER + 1)
    shot(page, "12-audit-filtered")
    with page.expect_download() as download:  # type: ignore[attr-defined]
        page.click("text=Export CSV")  # type: ignore[attr-defined]
    content = Path(download.value.path()).read_text()
    assert content.startswith("id,ts,kind") and content.count("auth.login") == LOCKOUT_AFTER + 1


def test_new_administrator_replaces_the_printed_password_then_turns_on_two_step_sign_in(
    page: object, portal: ServedPortal
) -> None:
    """``create-admin`` prints a password that only opens the change form; the new admin
    then scans a QR code, gets recovery codes once, and one of them signs them in."""
    expect = sync_api.expect
    created = subprocess.run(
        [sys.executable, "-m", "web", "create-admin", "--config", str(portal.config),
         "--username", "second"],
        capture_output=True, text=True, cwd=REPO, check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    match = re.search(r"password: (\S+)", created.stdout)
    assert match, created.stdout
    sign_in(page, "second", match.group(1))
    expect(page).to_have_url(re.compile(r"/account/password$"))
    expect(page.locator(".flash-info").first).to_be_visible()
    page.goto("/devices")  # type: ignore[attr-defined]
    expect(page).to_have_url(re.compile(r"/account/password$"))  # nothing else opens
    chosen = "lanterns over a quiet harbour"
    page.fill("#current", match.group(1))  # type: ignore[attr-defined]
    page.fill("#new", chosen)  # type: ignore[attr-defined]
    page.fill("#confirm", chosen)  # type: ignore[attr-defined]
    page.click("button:has-text('Change password')")  # type: ignore[attr-defined]
    expect(page.locator(".flash-success")).to_be_visible()
    page.goto("/account/totp")  # type: ignore[attr-defined]
    expect(page.locator("figure.qr svg")).to_be_visible()
    shot(page, "13-totp-setup-qr")
    secret = page.locator("p.secret").inner_text().strip()  # type: ignore[attr-defined]
    page.fill("#code", pyotp.TOTP(secret).now())  # type: ignore[attr-defined]
    page.click("button:has-text('Turn on')")  # type: ignore[attr-defined]
    codes = page.locator("ul.recovery-codes li")  # type: ignore[attr-defined]
    expect(codes).to_have_count(10)
    shot(page, "14-recovery-codes")
    first_code = codes.first.inner_text().strip()
    page.context.clear_cookies()  # type: ignore[attr-defined]
    sign_in(page, "second", chosen)
    expect(page).to_have_url(re.compile(r"/login/totp$"))
    page.fill("#code", first_code.lower())  # type: ignore[attr-defined]
    page.click("button:has-text('Verify')")  # type: ignore[attr-defined]
    expect(page.locator("h1")).to_have_text("Fleet overview")
    expect(page.locator(".flash-info")).to_contain_text("9 left")
