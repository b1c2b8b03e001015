"""The atheris target still runs (CI fuzzes it for longer: see its docstring)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import UNIT

ROOT = Path(__file__).resolve().parents[2]


def test_fuzz_target_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_decoder.py"), "-runs=3000", "-seed=1"],
        cwd=tmp_path,  # crash artifacts, if any, land here
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 3000 runs" in result.stderr
