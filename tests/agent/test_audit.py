"""The agent's local audit log (one chain for every feature): hash chain, tamper
detection, instruction wrapping, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.audit import AuditLog, read_entries, verify
from agent.control import InstructionError, Registry

REPO = Path(__file__).resolve().parents[2]


def filled(path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.append("instruction", "ok", action="ping", n=i)
    return log


def test_the_chain_verifies_and_continues_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    filled(path, 3)
    filled(path, 2)  # a new process appends to the same chain
    verdict = verify(path)
    assert verdict.ok and verdict.entries == 5
    assert [e["n"] for _, e, _ in read_entries(path) if e] == [1, 2, 3, 4, 5]
    assert oct(path.stat().st_mode & 0o777) == "0o640"


@pytest.mark.parametrize(
    ("tamper", "line", "problem"),
    [
        ("edit", 3, "content changed"),
        ("delete", 3, "does not follow"),
        ("swap", 2, "does not follow"),
        ("garbage", 4, "not a JSON object"),
    ],
)
def test_tampering_is_found_at_its_line(
    tmp_path: Path, tamper: str, line: int, problem: str
) -> None:
    path = tmp_path / "audit.log"
    filled(path, 5)
    lines = path.read_text().splitlines()
    if tamper == "edit":
        entry = json.loads(lines[2])
        entry["detail"]["action"] = "upload_logs"
        lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    elif tamper == "delete":
        del lines[2]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines[3] = "{oops"
    path.write_text("\n".join(lines) + "\n")
    verdict = verify(path)
    assert not verdict.ok and verdict.bad_line == line and problem in (verdict.problem or "")


async def test_every_instruction_is_recorded_with_its_outcome(tmp_path: Path) -> None:
    registry = Registry()

    @registry.action("ping")
    async def ping(instruction: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True}

    @registry.action("upload_logs")
    async def refuse(instruction: dict[str, Any]) -> None:
        raise InstructionError("forbidden_path", "no")

    log = AuditLog(tmp_path / "audit.log")
    log.wrap_actions(registry)
    assert await registry.actions["ping"]({"action": "ping", "n": 1}) == {"pong": True}
    with pytest.raises(InstructionError):
        await registry.actions["upload_logs"]({"action": "upload_logs", "path": "/etc/shadow"})
    entries = [e for _, e, _ in read_entries(log.path) if e]
    assert [(e["outcome"], e["detail"]["action"]) for e in entries] == [
        ("ok", "ping"),
        ("refused", "upload_logs"),
    ]
    assert entries[1]["detail"]["args"] == {"path": "/etc/shadow"}
    assert entries[1]["detail"]["error"] == "forbidden_path"


def test_cli_shows_and_verifies(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(f'data_dir = "{tmp_path}"\n')
    path = tmp_path / "audit.log"
    filled(path, 3)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent.telemetry", "audit", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    base = ["--config", str(tmp_path / "agent.toml")]
    shown = cli(*base, "show", "--tail", "2")
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 2
    assert '"action": "ping"' in shown.stdout
    ok = cli(*base, "verify")
    assert ok.returncode == 0 and "intact: 3 entries" in ok.stdout
    path.write_text(path.read_text().replace('"outcome":"ok"', '"outcome":"no"', 1))
    broken = cli(*base, "verify")
    assert broken.returncode == 1 and "BROKEN at line 1" in broken.stdout


def test_several_writers_keep_one_chain(tmp_path: Path) -> None:
    """Two features with their own AuditLog, threads, and another process."""
    import threading

    path = tmp_path / "audit.log"
    logs = [AuditLog(path), AuditLog(path)]

    def write(i: int) -> None:
        for n in range(25):
            logs[i % 2].append("test", "ok", writer=i, n=n)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from agent.audit import AuditLog;"
            "log = AuditLog(Path(sys.argv[1]));"
            "[log.append('cli', 'ok', n=n) for n in range(25)]",
            str(path),
        ],
        cwd=REPO,
    )
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert other.wait(60) == 0
    verdict = verify(path)
    assert verdict.ok and verdict.entries == 7 * 25


def test_a_line_cut_by_a_crash_is_reported_and_the_chain_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    filled(path, 2)
    with open(path, "a") as f:
        f.write('{"n":3,"kind":"cut')  # the machine lost power mid-write
    AuditLog(path).append("agent", "started")
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[3])["n"] == 3
    verdict = verify(path)
    assert not verdict.ok and verdict.bad_line == 3
