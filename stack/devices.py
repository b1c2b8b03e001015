"""Simulated devices on this machine: each an agent with its own folder, enrolled by token.

``./outlink up`` makes the first one; ``./outlink add-device TOKEN`` adds more with a
token made in the portal, exactly as a site's IT would on a real device.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from stack import processes
from stack.layout import Layout
from stack.status import agent_status

DEMO_CUSTOMER = ("demo-hospital", "Demo Hospital")
DEMO_SITE = ("radiology", "Radiology")


def demo_token(lay: Layout) -> str:
    """A one-time token for the demo customer's site, as `outlink-pki token create` makes."""
    from pki.fleet import ensure_site
    from pki.tokens import create_token
    from store.db import make_engine, session_scope

    engine = make_engine(lay.db_url)
    try:
        with session_scope(engine) as session:
            site = ensure_site(
                session,
                DEMO_CUSTOMER[0],
                DEMO_SITE[0],
                customer_name=DEMO_CUSTOMER[1],
                site_name=DEMO_SITE[1],
            )
            return create_token(session, site, created_by="outlink up").secret
    finally:
        engine.dispose()


def demo_agent_config(display: str | None) -> str:
    """The demo device's desktop policy, as the site's IT would set it at installation:
    consent required, and (for trying it alone) site contacts may answer in the portal."""
    if display is None:
        return "\n[desktop]\nenabled = false\n"
    return (
        "\n[desktop]\nenabled = true\n"
        f'display = "{display}"\n'
        "consent_required = true\nconsent_timeout_s = 30\nallow_remote_consent = true\n"
    )


def demo_telemetry_config(equipment: dict[str, Path]) -> str:
    """What the demo device's telemetry reads: the simulated scanner's log and properties."""
    log, props = equipment["log"], equipment["props"]
    return f"""# The simulated CT scanner (python -m sim): its log, error codes and properties.
poll_interval = 60
send_interval = 300
properties_file = "{props}"

[[sources]]
name = "scanner"
path = "{log}"

[severity]
default = "warning"
codes = {{ "I*" = "routine", "W*" = "warning", "E4*" = "warning", "E9*" = "urgent" }}

[[uploads]]
name = "scanner"
path = "{log}*"
max_bytes = 20_000_000
"""


class DemoDevice:
    """One agent: config, identity and data under ``directory``, process named ``name``."""

    def __init__(
        self,
        lay: Layout,
        name: str,
        directory: Path,
        *,
        hostname: str,
        extra_config: str = "",
        telemetry_config: str = "",
    ) -> None:
        self.lay, self.name, self.directory, self.hostname = lay, name, directory, hostname
        self.extra_config, self.telemetry_config = extra_config, telemetry_config
        self.config = directory / "agent.toml"
        self.identity_dir = directory / "identity"

    def write_config(self) -> None:
        """The agent's config; the fleet CA is "copied to the device out of band"."""
        self.identity_dir.mkdir(parents=True, exist_ok=True)
        ca_copy = self.identity_dir / "ca.pem"
        if not ca_copy.exists():
            ca_copy.write_bytes((self.lay.pki / "ca.pem").read_bytes())
        if not self.config.exists():
            self.config.write_text(
                f'relay_urls = ["{self.lay.relay_url}/agent"]\n'
                f'ca_file = "{ca_copy}"\n'
                f'identity_dir = "{self.identity_dir}"\n'
                f'data_dir = "{self.directory}"\n'
                'proxy = "none"\n' + self.extra_config
            )
        telemetry = self.directory / "telemetry.toml"  # found next to agent.toml
        if self.telemetry_config and not telemetry.exists():
            telemetry.write_text(self.telemetry_config)

    def enrolled(self) -> bool:
        return (self.identity_dir / "device.pem").exists()

    def enroll(self, token: str) -> None:
        """Run the agent's own `enroll` command, as an installer on the device would."""
        self.write_config()
        subprocess.run(
            [
                sys.executable, "-m", "agent", "enroll", "--config", str(self.config),
                "--token", token, "--hostname", self.hostname,
            ],
            check=True,
        )  # fmt: skip

    def start(self) -> None:
        self.write_config()
        argv = [sys.executable, "-m", "agent", "run", "--config", str(self.config)]
        processes.start(self.lay.run, self.lay.logs, self.name, argv)

    def wait_connected(self, timeout: float) -> bool:
        """Wait for the agent's own status file to say it is connected."""
        try:
            processes.wait_until(
                lambda: bool(agent_status(self.directory).get("connected")), timeout, self.name
            )
        except TimeoutError as exc:
            print(f"outlink: {exc}; see {self.lay.logs / (self.name + '.log')}")
            return False
        return True


def add_device(lay: Layout, token: str, name: str | None) -> int:
    """Enrol and start one more simulated device with a token from the portal."""
    existing = sorted(p.name for p in (lay.root / "devices").glob("*"))
    name = name or f"device-{len(existing) + 2}"
    # Added devices have no screen of their own: no desktop sessions on them.
    device = DemoDevice(
        lay,
        f"agent-{name}",
        lay.root / "devices" / name,
        hostname=name,
        extra_config="\n[desktop]\nenabled = false\n",
    )
    if device.enrolled():
        print(f"outlink: {name} is enrolled already; starting it")
    else:
        try:
            device.enroll(token)
        except subprocess.CalledProcessError:
            shutil.rmtree(device.directory, ignore_errors=True)  # leave no half-made device
            print(f"outlink: enrolling {name} failed (see above); nothing was started")
            return 1
    device.start()
    ok = device.wait_connected(30.0)
    print(
        f"outlink: {name} {'connected' if ok else 'NOT connected'}; log {lay.logs}/agent-{name}.log"
    )
    return 0 if ok else 1
