"""The cheap benchmarks still run as the README says (``python bench/NAME.py --quick``)
and end with their JSON: figures are not judged here (that is their own job), only that
they run and report what the issues ask for. A benchmark broken by a refactor otherwise
goes unnoticed until someone needs its numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import UNIT

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: benchmark -> keys its JSON must carry (from the issues' benchmark sections).
KEYS = {
    "tunnel_throughput": {"ratio", "control_p99_ms"},
    "relay_capacity": {"agents", "rss_per_agent_kib", "idle_cpu_pct"},
    "portal_slow_clients": {"nginx_p95_ms", "gunicorn_p95_ms", "nginx_failures"},
    "telemetry": {
        "records_per_s",
        "alarm_p95_ms",
        "lost",
        "duplicated",
        "agent_idle_cpu_pct",
        "agent_rss_mb",
    },
}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_quick_benchmark_runs_and_reports(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300 * UNIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert KEYS[name] <= set(report), sorted(KEYS[name] - set(report))
