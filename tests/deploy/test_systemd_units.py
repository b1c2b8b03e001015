"""The shipped systemd units: verified by systemd itself, hardened alike, and starting the
command the wheel installs with the configuration file the deploy/ examples describe.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import UNIT

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
#: unit -> the role's name: its command is outlink-<role>, its config /etc/outlink/<role>.toml.
UNITS = {
    "outlink-agent.service": "agent",
    "outlink-relay.service": "relay",
    "outlink-portal.service": "portal",
}
#: What every unit sets, whatever the role: a service that cannot gain privileges, sees
#: no home, no devices, no kernel knobs, and writes only its own directories.
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "RemoveIPC": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "Restart": "always",
}
#: Capabilities a unit may keep: binding port 443 (relay, portal).
ALLOWED_CAPABILITIES = {"", "CAP_NET_BIND_SERVICE"}
#: systemd-analyze security's exposure score, x10 (0 = locked down, 100 = wide open).
MAX_EXPOSURE = 20

units = pytest.mark.parametrize("unit", list(UNITS))


def service(unit: str) -> dict[str, list[str]]:
    """[Service] settings, every value of a repeated key in order."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in (SYSTEMD / unit).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def directives(unit: str) -> dict[str, str]:
    """[Service] settings, a repeated key keeping its last value."""
    return {key: values[-1] for key, values in service(unit).items()}


def scripts() -> dict[str, str]:
    """The console scripts the wheel installs, and the function each one runs."""
    found: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    return found


def systemd_analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    return subprocess.run([analyze, *map(str, args)], capture_output=True, text=True, timeout=60)


def runnable_here(unit: str, tmp_path: Path) -> Path:
    """The unit with its installed command replaced by this checkout's ``python -m``."""
    command = f"outlink-{UNITS[unit]}"
    package = scripts()[command].split(".")[0]
    copy = tmp_path / unit
    copy.write_text(
        (SYSTEMD / unit)
        .read_text()
        .replace(f"/usr/bin/{command}", f"{sys.executable} -m {package}")
    )
    return copy


@units
def test_unit_is_hardened(unit: str) -> None:
    settings = directives(unit)
    assert {key: settings.get(key) for key in HARDENING} == HARDENING
    assert service(unit)["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert settings["User"] == settings["Group"] == f"outlink-{UNITS[unit]}"
    assert settings["UMask"] in {"0077", "0027"}
    assert {settings["CapabilityBoundingSet"], settings["AmbientCapabilities"]} <= (
        ALLOWED_CAPABILITIES
    )
    # With ProtectSystem=strict, the state directories are all it may write.
    state = {f"/var/lib/{d}" for d in settings["StateDirectory"].split()}
    assert set(settings["ReadWritePaths"].split()) == state


@units
def test_unit_starts_the_installed_command_with_the_example_config(unit: str) -> None:
    role = UNITS[unit]
    program, *args = shlex.split(directives(unit)["ExecStart"])
    assert program == f"/usr/bin/outlink-{role}"
    assert f"outlink-{role}" in scripts()  # pip install 'outlink[...]' puts it in bin/
    config = args[args.index("--config") + 1]
    assert config == f"/etc/outlink/{role}.toml"
    assert (ROOT / "deploy" / f"{role}.example.toml").is_file()


def test_agent_unit_has_the_essentials() -> None:
    """R1: restarted after any failure and by the watchdog; R19: it only dials out."""
    agent = directives("outlink-agent.service")
    assert agent["Type"] == "notify"
    assert agent["WatchdogSec"] == "30"
    assert agent["ExecStart"].endswith(" run --config /etc/outlink/agent.toml")
    assert agent["ReadWritePaths"] == "/var/lib/outlink-agent"
    assert agent["CapabilityBoundingSet"] == ""
    # It dials out: blocking IP traffic would defeat the agent.
    assert "IPAddressDeny" not in agent


def test_relay_unit_essentials() -> None:
    relay = directives("outlink-relay.service")
    assert relay["Type"] == "exec"  # the relay sends no sd_notify
    assert relay["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"  # [listen] port = 443
    assert int(relay["LimitNOFILE"]) >= 20000 * 2  # example max_connections, plus viewers


def test_portal_unit_essentials() -> None:
    portal = directives("outlink-portal.service")
    assert portal["Type"] == "notify"  # see test_portal_reports_ready
    assert portal["NotifyAccess"] == "main"
    assert portal["ExecStart"] == "/usr/bin/outlink-portal serve --config /etc/outlink/portal.toml"


@units
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    # The packaged /usr/bin/outlink-* does not exist here; point at this checkout.
    result = systemd_analyze("verify", runnable_here(unit, tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@units
def test_systemd_analyze_security(unit: str, tmp_path: Path) -> None:
    result = systemd_analyze(
        "security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", runnable_here(unit, tmp_path)
    )
    assert result.returncode == 0, result.stdout.splitlines()[-1:]


def test_portal_reports_ready(tmp_path: Path) -> None:
    """Type=notify is right for the portal: ``serve`` becomes gunicorn (same pid), whose
    arbiter sends READY=1 on $NOTIFY_SOCKET once it listens."""
    env = {
        **os.environ,
        "OUTLINK_PORTAL_DATA_DIR": str(tmp_path / "portal"),
        "OUTLINK_PORTAL_DATABASE_URL": f"sqlite:///{tmp_path}/portal.db",
        "OUTLINK_PORTAL_BIND": "127.0.0.1:0",
        "OUTLINK_PORTAL_WORKERS": "1",
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
    }
    subprocess.run(
        [sys.executable, "-m", "web", "init"], env=env, check=True, capture_output=True, timeout=120
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(env["NOTIFY_SOCKET"])
        notify.settimeout(60 * UNIT)
        portal = subprocess.Popen(
            [sys.executable, "-m", "web", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            message = notify.recv(4096)
        finally:
            os.killpg(portal.pid, signal.SIGTERM)
            portal.wait(timeout=60)
    assert b"READY=1" in message.split(b"\n")
