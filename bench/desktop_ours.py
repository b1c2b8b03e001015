"""Ours: the agent's desktop session, through the relay's ``/view``, in the portal's viewer.

Everything is the real product, each as its own process started by its CLI:

* the relay (``python -m relay_server``, `harness.RelayProcess`) with ``[viewer]
  allowed_origins`` naming the portal;
* the portal (``python -m web init`` then ``serve``: gunicorn over TLS) with the portal's
  service certificate for the relay;
* one agent (``python -m agent enroll`` with a one-time token, then ``run``), its
  ``[desktop]`` on the benchmark's display with ``consent_required = false`` (the
  customer's choice R31 allows: the request is accepted at once, and the session is
  reported as "no consent asked"); everything else at its defaults (30 fps cap, half a
  core CPU budget, ``nice`` 10).

The session goes the way an engineer's does: sign in on the portal (a service engineer
made in the database), request a desktop session with control on the device's page,
and open the viewer it leads to; the probe reads the viewer's canvas. CPU is charged to
the agent (with its indicator window program) and the relay; the portal only serves
pages and tickets.
"""

from __future__ import annotations

import contextlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import psutil
from desktop_stack import Child, Unavailable, wait_until
from harness import HOST, PYTHON, ROOT, BenchPKI, RelayProcess, free_port, progress

if TYPE_CHECKING:
    from playwright.sync_api import Page

START_TIMEOUT = 60.0
ENGINEER = "bench-engineer"
PASSWORD = "desktop benchmark passphrase"


def missing_parts(root: Path = ROOT) -> list[str]:
    """The parts of our desktop session this tree does not have yet."""
    missing = []
    if not (root / "relay_server" / "desktop" / "viewer.py").exists():
        missing.append("relay_server: the /view endpoint")
    if not (root / "agent" / "desktop" / "service.py").exists():
        missing.append("agent/desktop: the agent's desktop session service")
    if (
        not (root / "web" / "desktop.py").exists()
        or not (root / "web" / "static" / "viewer").is_dir()
    ):
        missing.append("web: the desktop request page and viewer")
    return missing


class ViewerRelay(RelayProcess):
    """The benchmark relay, with its ``/view`` port open to the portal's pages."""

    def __init__(self, workdir: Path, pki: BenchPKI, db_url: str, portal_origin: str) -> None:
        super().__init__(workdir, pki, db_url)
        self.portal_origin = portal_origin
        self.view_port = free_port()

    def write_config(self) -> None:
        super().write_config()
        with open(self.config_file, "a") as f:
            f.write(
                f'\n[viewer]\nallowed_origins = ["{self.portal_origin}"]\nport = {self.view_port}\n'
            )


class OursStack:
    """Relay, portal and agent for ``display``; the viewer is the portal's page."""

    name = "ours"

    def __init__(self, display: str, workdir: Path, pki: BenchPKI) -> None:
        missing = missing_parts()
        if missing:
            raise Unavailable("missing: " + "; ".join(missing))
        self.display = display
        self.dir = workdir / "ours"
        self.dir.mkdir(exist_ok=True)
        self.pki = pki
        self.db_url = f"sqlite:///{self.dir / 'outlink.db'}"
        self.portal_port = free_port()
        self.portal_origin = f"https://{HOST}:{self.portal_port}"
        self.relay = ViewerRelay(self.dir, pki, self.db_url, self.portal_origin)
        self.agent_dir = self.dir / "agent"
        self.device_id = ""
        self._children: list[Child] = []

    def __enter__(self) -> OursStack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- start --------------------------------------------------------------------------

    def _start(self) -> None:
        from store.db import upgrade

        upgrade(self.db_url)
        self.relay.start()
        self._start_portal()
        self._add_engineer()
        self._start_agent()

    def _start_portal(self) -> None:
        from pki.issue import issue_service_cert
        from pki.keys import private_key_pem

        service = issue_service_cert(self.pki.ca, "portal")
        cert, key = self.dir / "portal-service.pem", self.dir / "portal-service.key"
        cert.write_bytes(service.cert_pem)
        key.write_bytes(private_key_pem(service.key))
        key.chmod(0o600)
        config = self.dir / "portal.toml"
        config.write_text(
            f"""[portal]
data_dir = "{self.dir / "portal"}"
database_url = "{self.db_url}"
bind = "{HOST}:{self.portal_port}"
relay_ca = "{self.pki.ca_file}"
relay_cert = "{cert}"
relay_key = "{key}"
relay_url = "{self.relay.url("/service")}"
relay_view_url = "wss://{HOST}:{self.relay.view_port}/view"
workers = 1
"""
        )
        subprocess.run(
            [PYTHON, "-m", "web", "init", "--config", str(config)],
            cwd=ROOT, check=True, capture_output=True, timeout=START_TIMEOUT,
        )  # fmt: skip
        portal = Child(
            "portal",
            [PYTHON, "-m", "web", "serve", "--config", str(config)],
            self.dir / "portal.log",
            cwd=ROOT,
        )
        self._children.append(portal)
        wait_until(self._portal_up, START_TIMEOUT, "the portal", [portal])
        progress(f"portal up on {self.portal_origin}")

    def _portal_up(self) -> bool:
        import ssl
        import urllib.request

        # The portal's certificate comes from the staff CA its `init` made.
        tls = ssl.create_default_context(cafile=str(self.dir / "portal" / "staff-ca" / "ca.pem"))
        try:
            url = f"{self.portal_origin}/healthz"
            with urllib.request.urlopen(url, timeout=2, context=tls) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _add_engineer(self) -> None:
        """A service engineer (desktop.view + desktop.control) over the whole fleet."""
        from sqlalchemy import select

        from store.db import make_engine, session_scope
        from store.portal import Role, User
        from web.passwords import hash_password

        engine = make_engine(self.db_url)
        try:
            with session_scope(engine) as session:
                now = datetime.now(UTC)
                role_id = session.scalar(select(Role.id).where(Role.name == "service_engineer"))
                session.add(
                    User(
                        username=ENGINEER, display_name="Bench Engineer",
                        password_hash=hash_password(PASSWORD), role_id=role_id, all_scope=True,
                        is_active=True, must_change_password=False, created_at=now,
                        password_changed_at=now,
                    )
                )  # fmt: skip
        finally:
            engine.dispose()

    def _start_agent(self) -> None:
        from pki.fleet import ensure_site
        from pki.tokens import create_token
        from stack.status import agent_status
        from store.db import make_engine, session_scope

        engine = make_engine(self.db_url)
        try:
            with session_scope(engine) as session:
                site = ensure_site(session, "bench", "lab")
                token = create_token(session, site, created_by="desktop bench").secret
        finally:
            engine.dispose()
        identity = self.agent_dir / "identity"
        identity.mkdir(parents=True)
        (identity / "ca.pem").write_bytes(self.pki.ca_file.read_bytes())
        config = self.agent_dir / "agent.toml"
        config.write_text(
            f"""relay_urls = ["{self.relay.url("/agent")}"]
ca_file = "{identity / "ca.pem"}"
identity_dir = "{identity}"
data_dir = "{self.agent_dir}"
proxy = "none"

[desktop]
enabled = true
consent_required = false
display = "{self.display}"
"""
        )
        subprocess.run(
            [PYTHON, "-m", "agent", "enroll", "--config", str(config), "--token", token,
             "--hostname", "bench-device"],
            cwd=ROOT, check=True, capture_output=True, timeout=START_TIMEOUT,
        )  # fmt: skip
        agent = Child(
            "agent",
            [PYTHON, "-m", "agent", "run", "--config", str(config)],
            self.dir / "agent.log",
            cwd=ROOT,
            env={"DISPLAY": self.display},
        )
        self._children.append(agent)
        wait_until(
            lambda: bool(agent_status(self.agent_dir).get("connected")),
            START_TIMEOUT,
            "the agent to connect",
            [agent],
        )
        self.device_id = str(agent_status(self.agent_dir)["device_id"])
        progress(f"agent connected as device {self.device_id}")

    # -- the Stack interface --------------------------------------------------------------

    def processes(self) -> dict[str, psutil.Process]:
        agent = next(c.process for c in self._children if c.name == "agent")
        return {"agent": agent, "relay": psutil.Process(self.relay.pid)}

    def open_viewer(self, page: Page, timeout: float) -> None:
        """Sign in, request a session with control on the device's page, wait for the
        viewer to show the screen, and switch it to 1:1 (as noVNC shows it)."""
        ms = timeout * 1000
        page.set_default_timeout(ms)
        page.goto(f"{self.portal_origin}/login")
        page.fill("#username", ENGINEER)
        page.fill("#password", PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_url(lambda url: "/login" not in url)
        page.goto(f"{self.portal_origin}/devices/{self.device_id}/desktop")
        page.check("input[name=mode][value=control]")
        page.fill("#reason", "benchmark")
        page.click("button:has-text('Request remote desktop')")
        page.wait_for_selector("#desktop[data-state=started]")
        page.select_option("#viewer-scale", "1")
        page.wait_for_function(
            "() => window.__bench.read() && window.__bench.frame >= 0", polling=100
        )

    def close(self) -> None:
        for child in reversed(self._children):
            with contextlib.suppress(Exception):
                child.stop()
        self.relay.stop()
