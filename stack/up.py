"""``./outlink up``: CA, relay, portal and one enrolled agent on this machine, under ``./var``.

Every step first looks at what exists, so running it again starts only what is not
running and never makes a second CA, admin or device.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from stack import devices, notifications, processes, screen
from stack.layout import Layout
from stack.status import print_status

INITIAL_PASSWORD_FILE = "initial-admin-password"  # noqa: S105 (a file name, not a secret)
READY_TIMEOUT_S = 30.0


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (secrets and keys live in ./var)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _write_if_missing(path: Path, text: str) -> None:
    """Configs are written once; the user's edits survive the next ``up``."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def setup_pki(lay: Layout) -> None:
    """Fleet CA, the relay's server certificate and the portal's service certificate."""
    from pki.cli import main as pki_main

    for argv in (
        ["init", "--dir", str(lay.pki)],
        ["server-cert", "--dir", str(lay.pki), "--dns", lay.host, "--ip", "127.0.0.1"],
        ["service-cert", "--dir", str(lay.pki), "--name", "portal"],
    ):
        if pki_main(argv) != 0:
            raise SystemExit(f"outlink-pki {' '.join(argv)} failed")


def write_configs(lay: Layout) -> None:
    """TOML configs of the three processes, wired to each other and to ./var."""
    _write_if_missing(
        lay.relay_config,
        f"""relay_id = "local"
service_url = "wss://{lay.host}:{lay.relay_port}/service"
db_url = "{lay.db_url}"

[listen]
host = "127.0.0.1"
port = {lay.relay_port}

[ops]
host = "127.0.0.1"
port = {lay.ops_port}

[tls]
cert = "{lay.pki / "relay.pem"}"
key = "{lay.pki / "relay.key"}"
ca = "{lay.pki / "ca.pem"}"
ca_dir = "{lay.pki}"

# Browser viewers of desktop sessions: their own port, which asks for no client
# certificate, with the portal's certificate so a browser that accepted the portal
# accepts this too.
[viewer]
allowed_origins = ["https://{lay.host}:{lay.portal_port}"]
port = {lay.viewer_port}
cert = "{lay.portal_dir / "tls.pem"}"
key = "{lay.portal_dir / "tls.key"}"
""",
    )
    _write_if_missing(
        lay.portal_config,
        f"""[portal]
data_dir = "{lay.portal_dir}"
database_url = "{lay.db_url}"
bind = "127.0.0.1:{lay.portal_port}"
relay_view_url = "wss://{{host}}:{lay.viewer_port}/view"
tls_cert = "{lay.portal_dir / "tls.pem"}"
tls_key = "{lay.portal_dir / "tls.key"}"
staff_ca_dir = "{lay.portal_dir / "staff-ca"}"
relay_url = "wss://{lay.host}:{lay.relay_port}/service"
relay_ca = "{lay.pki / "ca.pem"}"
relay_cert = "{lay.pki / "portal.pem"}"
relay_key = "{lay.pki / "portal.key"}"
upload_dir = "{lay.upload_dir}"
""",
    )


def init_portal(lay: Layout) -> str | None:
    """Migrate the DB and create the first admin; returns the initial password if known."""
    from web.cli import init_portal as portal_init
    from web.config import load_config

    created = portal_init(load_config(lay.portal_config), out=lambda _line: None)
    password_file = lay.portal_dir / INITIAL_PASSWORD_FILE
    if created.get("admin_password"):
        _write_private(password_file, created["admin_password"] + "\n")
    if not created["admin_initial_pending"]:  # changed at the first sign-in: forget it
        password_file.unlink(missing_ok=True)
    return password_file.read_text().strip() if password_file.exists() else None


def _ready(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_relay(lay: Layout) -> None:
    processes.start(
        lay.run,
        lay.logs,
        "relay",
        [
            sys.executable,
            "-m",
            "relay_server",
            "--config",
            str(lay.relay_config),
            "--telemetry",
            str(lay.relay_telemetry_config),
        ],
    )
    processes.wait_until(
        lambda: _ready(f"http://127.0.0.1:{lay.ops_port}/readyz"), READY_TIMEOUT_S, "relay"
    )


def start_portal(lay: Layout) -> None:
    processes.start(
        lay.run,
        lay.logs,
        "portal",
        [sys.executable, "-m", "web", "serve", "--config", str(lay.portal_config)],
    )
    context = ssl.create_default_context(cafile=str(lay.portal_dir / "staff-ca" / "ca.pem"))
    processes.wait_until(
        lambda: _ready(f"{lay.portal_url}healthz", context), READY_TIMEOUT_S, "portal"
    )


def up(lay: Layout) -> int:
    """Bring everything up and print where it is."""
    lay.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    print(f"outlink: setting up in {lay.root}", flush=True)
    setup_pki(lay)
    write_configs(lay)
    password = init_portal(lay)
    notifications.write_relay_telemetry_config(lay)
    notifications.ensure_demo_rule(lay)
    notifications.start_receivers(lay)
    start_relay(lay)
    start_portal(lay)
    display = screen.start_screen(lay)
    equipment = screen.start_equipment(lay, display)
    demo = devices.DemoDevice(
        lay, "agent", lay.agent_dir, hostname="demo-ct-01",
        extra_config=devices.demo_agent_config(display),
        telemetry_config=devices.demo_telemetry_config(equipment),
    )  # fmt: skip
    if not demo.enrolled():
        demo.enroll(devices.demo_token(lay))
    demo.start()
    demo.wait_connected(READY_TIMEOUT_S)
    print_status(lay, password=password)
    return 0
