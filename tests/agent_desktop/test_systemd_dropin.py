"""The desktop drop-in for the agent's unit: verified by systemd together with the unit."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNIT = SYSTEMD / "outlink-agent.service"
DROPIN = SYSTEMD / "outlink-agent-desktop.conf"


def test_dropin_reaches_the_display() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DROPIN)
    service = parser["Service"]
    assert service["Environment"] == "DISPLAY=:0"
    assert service["BindReadOnlyPaths"] == "/tmp/.X11-unix"  # PrivateTmp hides it


def test_systemd_analyze_verify_with_the_dropin(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "outlink-agent.service"
    unit.write_text(
        UNIT.read_text().replace("/usr/bin/outlink-agent", f"{sys.executable} -m agent")
    )
    dropins = tmp_path / "outlink-agent.service.d"
    dropins.mkdir()
    shutil.copy(DROPIN, dropins / "desktop.conf")
    result = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        # Search our directory first, so the drop-in is found next to the unit.
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},
    )
    assert result.returncode == 0, result.stderr
    # systemd reads the drop-in (a bad key in it shows up here) and has nothing to say.
    assert result.stderr.strip() == ""
