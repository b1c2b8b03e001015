"""Every atheris target still runs (CI fuzzes them for longer: see stack/testrun.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import UNIT

ROOT = Path(__file__).resolve().parents[2]
TARGETS = sorted(p.name for p in (ROOT / "fuzz").glob("fuzz_*.py"))


def test_every_device_data_parser_has_a_target() -> None:
    """Issue 14: each parser of device data (tunnel, desktop, telemetry, rules, control, logs)."""
    assert set(TARGETS) >= {
        "fuzz_decoder.py",
        "fuzz_desktop_wire.py",
        "fuzz_desktop_protocol.py",
        "fuzz_telemetry_codec.py",
        "fuzz_rules.py",
        "fuzz_control.py",
        "fuzz_upload_meta.py",
    }


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_runs(tmp_path: Path, target: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / target), "-runs=3000", "-seed=1"],
        cwd=tmp_path,  # crash artifacts, if any, land here
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 3000 runs" in result.stderr
