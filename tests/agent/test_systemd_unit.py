"""The shipped systemd unit: verified by systemd itself, and the R1/R19 essentials present."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_FILE = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "outlink-agent.service"


def directives() -> dict[str, str]:
    """[Service] settings (a repeated key keeps its last value; fine for these checks)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT_FILE)
    return dict(parser["Service"])


def test_unit_has_the_essentials() -> None:
    service = directives()
    assert service["Type"] == "notify"
    assert service["Restart"] == "always"
    assert service["WatchdogSec"] == "30"
    assert service["ExecStart"].endswith("run --config /etc/outlink/agent.toml")
    assert service["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    assert service["ReadWritePaths"] == "/var/lib/outlink-agent"
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert service[key] == "yes"
    assert service["ProtectSystem"] == "strict"
    # It dials out: blocking IP traffic would defeat the agent.
    assert "IPAddressDeny" not in service


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # The packaged /usr/bin/outlink-agent does not exist here; point at this checkout.
    unit = tmp_path / "outlink-agent.service"
    unit.write_text(
        UNIT_FILE.read_text().replace("/usr/bin/outlink-agent", f"{sys.executable} -m agent")
    )
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
