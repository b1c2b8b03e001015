"""A remote desktop session as people live it, every part real: the portal (gunicorn, TLS),
the relay and the agent as processes, the agent's screen a private Xvfb with the Tk test
program on it, the engineer in headless Chromium, the person at the device answering with
``outlink-agent desktop accept|deny``.

Screenshots go to ``$OUTLINK_SCREENSHOT_DIR`` (default: a folder in the system temp dir).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from protocol.ids import DeviceId
from store.db import make_engine, session_scope
from store.desktop import DevicePolicy
from store.models import Device, Presence, Site
from tests.agent.helpers import free_port
from tests.conftest import UNIT
from tests.desktop.conftest import App
from tests.desktop.test_clipboard import TkClipboard
from tests.desktop.tkapp import BACKGROUND, BLOCK, BLOCK_COLOUR
from tests.desktop_session.conftest import device_clipboard_is
from tests.pki_fixtures import FleetPKI
from tests.web.served import ENGINEER_PASSWORD, ServedPortal, serve_portal

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
SHOTS = Path(
    os.environ.get(
        "OUTLINK_SCREENSHOT_DIR", Path(tempfile.gettempdir()) / "outlink-desktop-screens"
    )
)
TIMEOUT_MS = 20_000 * UNIT
CONSENT_TIMEOUT_S = 5


@dataclass
class Stack:
    portal: ServedPortal
    dir: Path
    device_id: str
    relay: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes]

    def answer(self, action: str, session_id: str) -> str:
        """What the person at the device types: ``outlink-agent desktop ACTION ID``."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "desktop",
                action,
                session_id,
                "--config",
                str(self.dir / "agent.toml"),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=self.dir,
            timeout=30 * UNIT,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _until(condition: Any, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for another process to reach a state we can only observe by asking."""
    deadline = time.monotonic() + 30 * UNIT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"{what}: process exited {proc.returncode}\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")
        time.sleep(0.1 * UNIT)


def _spawn(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=cwd,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10 * UNIT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _register_device(database_url: str) -> str:
    """A device of Acme (the engineer's customer) in the portal's database."""
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            site = session.scalars(select(Site).where(Site.slug == "site-0")).first()
            assert site is not None
            device = Device(
                id=str(uuid.uuid4()),
                customer_id=site.customer_id,
                site_id=site.id,
                enrolled_at=datetime.now(UTC),
                hostname="ct-demo",
                model="CT Scanner 9000",
            )
            session.add(device)
            return device.id
    finally:
        engine.dispose()


def _online(database_url: str, device_id: str) -> bool:
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            row = session.get(Presence, device_id)
            return bool(row and row.online and row.relay_id == "relay-desktop")
    finally:
        engine.dispose()


def _policy_reported(database_url: str, device_id: str) -> bool:
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            return session.get(DevicePolicy, device_id) is not None
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def screen(xdisplay: str) -> Iterator[App]:
    program = App(xdisplay)
    try:
        program.expect(lambda e: e["event"] == "ready", timeout=20 * UNIT)
        yield program
    finally:
        program.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, fleet_pki: FleetPKI, xdisplay: str, screen: App
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("desktop-stack")
    port, ops, view = free_port(), free_port(), free_port()
    service_url = f"wss://localhost:{port}/service"
    (tmp / "portal").mkdir()
    with serve_portal(
        tmp / "portal",
        relay_ca=str(fleet_pki.ca_file),
        relay_cert=str(fleet_pki.portal.cert_file),
        relay_key=str(fleet_pki.portal.key_file),
        relay_url=service_url,
        relay_view_url=f"wss://localhost:{view}/view",
    ) as portal:
        device_id = _register_device(portal.database_url)
        cert = fleet_pki.device_cert(DeviceId(device_id), "acme", "site-0")
        (tmp / "relay.toml").write_text(f"""
relay_id = "relay-desktop"
service_url = "{service_url}"
db_url = "{portal.database_url}"
[listen]
port = {port}
[ops]
port = {ops}
[tls]
cert = "{fleet_pki.server.cert_file}"
key = "{fleet_pki.server.key_file}"
ca = "{fleet_pki.ca_file}"
ca_dir = ""
[viewer]
allowed_origins = ["{portal.base_url}"]
port = {view}
cert = "{portal.data_dir / "portal.pem"}"
key = "{portal.data_dir / "portal.key"}"
[log]
format = "text"
level = "DEBUG"
""")
        identity = tmp / "agent" / "identity"
        identity.mkdir(parents=True)
        shutil.copy(cert.cert_file, identity / "device.pem")
        shutil.copy(cert.key_file, identity / "device.key")
        shutil.copy(fleet_pki.ca_file, identity / "ca.pem")
        (tmp / "agent.toml").write_text(f"""
relay_urls = ["wss://localhost:{port}/agent"]
ca_file = "{fleet_pki.ca_file}"
identity_dir = "{identity}"
data_dir = "{tmp / "agent"}"
proxy = "none"
log_level = "DEBUG"
[desktop]
enabled = true
display = "{xdisplay}"
consent_required = true
consent_timeout_s = {CONSENT_TIMEOUT_S}.0
""")
        relay = _spawn(["relay_server", "--config", "relay.toml"], tmp, tmp / "relay.log")
        agent = None
        try:

            def ready() -> bool:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{ops}/readyz", timeout=UNIT
                    ) as response:
                        return bool(response.status == 200)
                except OSError:
                    return False

            _until(ready, "the relay", relay, tmp / "relay.log")
            agent = _spawn(["agent", "run", "--config", "agent.toml"], tmp, tmp / "agent.log")
            _until(
                lambda: _online(portal.database_url, device_id),
                "the agent online",
                agent,
                tmp / "agent.log",
            )
            yield Stack(portal, tmp, device_id, relay, agent)
        finally:
            if agent is not None:
                _stop(agent)
            _stop(relay)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
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
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    # ignore_https_errors: portal and relay certificates come from our own CAs, which this
    # throwaway profile does not trust (tests/web/test_serve.py verifies those chains).
    context = browser.new_context(
        ignore_https_errors=True,
        base_url=stack.portal.base_url,
        viewport={"width": 1500, "height": 1100},
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/login")
    page.fill("#username", "eng")
    page.fill("#password", ENGINEER_PASSWORD)
    page.click("button:has-text('Sign in')")
    sync_api.expect(page.locator("h1")).to_have_text("Fleet overview")
    yield page
    context.close()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def request_desktop(page: Any, stack: Stack, mode: str) -> str:
    page.goto(f"/devices/{stack.device_id}")
    page.click("text=Request remote desktop")
    page.check(f"input[name=mode][value={mode}]")
    page.fill("#reason", "Error 42 on the console")
    page.click("button:has-text('Request remote desktop')")
    sync_api.expect(page.locator("#desktop")).to_have_attribute("data-state", "prompting")
    match = re.search(r"session=([0-9a-f-]{36})", page.url)
    assert match
    return match.group(1)


def canvas_pixel(page: Any, x: int, y: int) -> tuple[int, int, int]:
    rgb = page.evaluate("([x, y]) => window.outlinkViewer.screen.pixel(x, y)", [x, y])
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def close_to(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 24) -> bool:
    return all(abs(p - q) <= tolerance for p, q in zip(a, b, strict=True))


def test_the_device_page_shows_the_consent_setting_before_any_request(
    page: Any, stack: Stack
) -> None:
    _until(
        lambda: _policy_reported(stack.portal.database_url, stack.device_id),
        "the device's consent setting",
        stack.agent,
        stack.dir / "agent.log",
    )
    page.goto(f"/devices/{stack.device_id}")
    setting = page.locator("#desktop-consent-setting")
    sync_api.expect(setting).to_have_attribute("data-consent", "required")
    sync_api.expect(setting).to_contain_text(f"within {CONSENT_TIMEOUT_S} s")


def test_accepted_session_shows_the_device_screen_and_drives_it(
    page: Any, stack: Stack, screen: App
) -> None:
    expect = sync_api.expect
    sid = request_desktop(page, stack, "control")
    expect(page.locator("#desktop-countdown")).to_contain_text("s left for the answer")
    shot(page, "desktop-01-waiting")
    assert "session " + sid in stack.answer("accept", sid)
    expect(page.locator("#desktop")).to_have_attribute("data-state", "started")
    page.wait_for_function("window.outlinkViewer.screen.painted > 0")
    expect(page.locator("#viewer-conn")).to_have_text("connected")
    # The canvas shows what the X server shows: the Tk program's block and background.
    x, y, w, h = BLOCK
    assert close_to(canvas_pixel(page, x + w // 2, y + h // 2), _hex(BLOCK_COLOUR))
    assert close_to(canvas_pixel(page, x + w + 60, y + h // 2), _hex(BACKGROUND))
    assert close_to(canvas_pixel(page, 640, 700), _hex(BACKGROUND))
    # A click and typed text in the viewer reach the program on the device.
    box = page.locator("#viewer-canvas").bounding_box()
    size = page.evaluate("[window.outlinkViewer.screen.width, window.outlinkViewer.screen.height]")
    scale = box["width"] / size[0]
    screen.drain()
    page.mouse.click(box["x"] + (x + 20) * scale, box["y"] + (y + 20) * scale)
    clicked = screen.expect(lambda e: e["event"] == "button")[-1]
    assert clicked["num"] == 1
    assert abs(clicked["x"] - (x + 20)) <= 2 and abs(clicked["y"] - (y + 20)) <= 2
    page.keyboard.type("ok")
    screen.expect(lambda e: e["event"] == "key" and e["char"] == "o")
    screen.expect(lambda e: e["event"] == "key" and e["char"] == "k")
    shot(page, "desktop-02-viewer")
    page.click("#desktop-end")
    expect(page.locator("#desktop")).to_have_attribute("data-state", "ended")
    expect(page.locator("#desktop-message")).to_have_text(
        "The session ended: it was ended from the portal."
    )
    shot(page, "desktop-03-ended")


def test_denied_request_says_so(page: Any, stack: Stack) -> None:
    sid = request_desktop(page, stack, "view")
    stack.answer("deny", sid)
    sync_api.expect(page.locator("#desktop")).to_have_attribute("data-state", "denied")
    sync_api.expect(page.locator("#desktop-message")).to_have_text(
        "The request was denied at the device."
    )
    assert page.locator("#viewer").is_hidden()
    shot(page, "desktop-04-denied")


def test_unanswered_request_times_out_with_a_clear_message(page: Any, stack: Stack) -> None:
    request_desktop(page, stack, "view")
    sync_api.expect(page.locator("#desktop")).to_have_attribute(
        "data-state", "timeout", timeout=(CONSENT_TIMEOUT_S + 10) * 1000 * UNIT
    )
    sync_api.expect(page.locator("#desktop-message")).to_have_text(
        "Nobody answered at the device in time: the request was declined automatically."
    )
    assert page.locator("#viewer").is_hidden()
    shot(page, "desktop-05-timeout")


def device_paste(display: str, expected: str) -> bool:
    """Whether pasting on the device gives ``expected`` within 20 s."""
    return device_clipboard_is(display, expected.encode("utf-8"), 20 * UNIT)


@pytest.mark.skipif(shutil.which("xclip") is None, reason="xclip (Debian package) is missing")
def test_clipboard_both_ways_through_the_relay(
    page: Any, stack: Stack, screen: App, xdisplay: str
) -> None:
    expect = sync_api.expect
    page.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=stack.portal.base_url
    )
    sid = request_desktop(page, stack, "control")
    stack.answer("accept", sid)
    expect(page.locator("#desktop")).to_have_attribute("data-state", "started")
    page.wait_for_function("window.outlinkViewer.screen.painted > 0")
    # The engineer's text, through the panel, is pasteable in a program on the device.
    page.click("#viewer-clip-toggle")
    page.fill("#viewer-clip-local", "Ticket #4711: käse ✓")
    page.click("#viewer-clip-send")
    expect(page.locator("#viewer-clip-note")).to_contain_text("sent to the device")
    assert device_paste(xdisplay, "Ticket #4711: käse ✓")
    # Ctrl+V in the screen sends the engineer's own clipboard first, then the keys.
    page.evaluate("navigator.clipboard.writeText('from my laptop')")
    page.locator("#viewer-canvas").focus()
    screen.drain()
    page.keyboard.press("Control+V")
    screen.expect(lambda e: e["event"] == "key" and e["keysym"] in ("v", "V"))
    assert device_paste(xdisplay, "from my laptop")
    # Text copied by a program on the device shows in the viewer.
    copier = TkClipboard(xdisplay)
    try:
        copier.copy("log line 7: überhitzt")
        expect(page.locator("#viewer-clip-remote")).to_have_value("log line 7: überhitzt")
        page.click("#viewer-clip-copy")
        assert page.evaluate("navigator.clipboard.readText()") == "log line 7: überhitzt"
        shot(page, "desktop-06-clipboard")
    finally:
        copier.close()
    page.click("#desktop-end")
    expect(page.locator("#desktop")).to_have_attribute("data-state", "ended")


@pytest.mark.skipif(shutil.which("xclip") is None, reason="xclip (Debian package) is missing")
def test_view_only_session_shows_the_device_clipboard_only(
    page: Any, stack: Stack, xdisplay: str
) -> None:
    expect = sync_api.expect
    copier = TkClipboard(xdisplay)
    try:
        sid = request_desktop(page, stack, "view")
        stack.answer("accept", sid)
        expect(page.locator("#desktop")).to_have_attribute("data-state", "started")
        page.wait_for_function("window.outlinkViewer.screen.painted > 0")
        page.click("#viewer-clip-toggle")
        expect(page.locator("#viewer-clip-to-device")).to_be_hidden()
        copier.copy("copied while the engineer watches")
        expect(page.locator("#viewer-clip-remote")).to_have_value(
            "copied while the engineer watches"
        )
    finally:
        copier.close()
    page.click("#desktop-end")
    expect(page.locator("#desktop")).to_have_attribute("data-state", "ended")
