"""``./outlink test``: the whole suite against SQLite and a private PostgreSQL, then fuzzing.

The PostgreSQL server is a throwaway cluster in a temporary folder on a free loopback
port, so the suite never depends on (or disturbs) a system database.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: The whole fuzzing budget, split evenly between the targets in fuzz/ (one per parser).
FUZZ_SECONDS = int(os.environ.get("OUTLINK_FUZZ_SECONDS", "30"))
#: What a target spends importing and instrumenting before it fuzzes (measured: 2-3 s),
#: taken out of its share so the whole step stays near FUZZ_SECONDS.
FUZZ_STARTUP_SECONDS = 2
#: No target fuzzes for less.
FUZZ_MIN_SECONDS = 2
#: Every package of the product (what the wheel ships), type-checked on each run.
MYPY_PACKAGES = (
    "tunnel",
    "protocol",
    "tomlconfig",
    "release",
    "jsonlog",
    "pki",
    "store",
    "relay_server",
    "agent",
    "web",
    "desktop",
    "telemetry",
    "sim",
    "stack",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin() -> Path | None:
    found = sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")))
    return found[-1] if found else None


@contextlib.contextmanager
def private_postgres() -> Iterator[str | None]:
    """Yield a SQLAlchemy URL of a fresh cluster, or None when PostgreSQL is not installed."""
    if os.environ.get("OUTLINK_TEST_POSTGRES_URL"):
        yield os.environ["OUTLINK_TEST_POSTGRES_URL"]
        return
    bindir = _pg_bin()
    if bindir is None:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="outlink-pg-"))
    data, port = tmp / "data", _free_port()
    # initdb refuses to run as root: run the server as the postgres system user then.
    prefix: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "outlink",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # A scratch cluster: durability settings off, loopback only, enough connections
    # for the portal's pool plus the relay's in parallel tests.
    opts = f"-h 127.0.0.1 -p {port} -k {tmp} -c fsync=off -c full_page_writes=off"
    opts += " -c max_connections=200"
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-w",
            "-l",
            str(tmp / "log"),
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        subprocess.run(
            [
                str(bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "outlink",
                "outlink_test",
            ],
            check=True,
        )
        yield f"postgresql+psycopg://outlink@127.0.0.1:{port}/outlink_test"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
        )
        shutil.rmtree(tmp, ignore_errors=True)


def run(pytest_args: list[str]) -> int:
    """Lint, format check, type check, the SBOMs and their audit, a bounded fuzzing run of
    each parser, then the suite.

    The suite runs last so that its summary is the last line a reader (or CI) sees.
    """
    python = sys.executable
    steps: list[list[str]] = [
        [python, "-m", "ruff", "check", "."],
        [python, "-m", "ruff", "format", "--check", "."],
        # Strictness per package is in pyproject.toml ([tool.mypy] overrides).
        [python, "-m", "mypy", *MYPY_PACKAGES],
    ]
    # The SBOM per role and the vulnerability audit (stack/sbom.py); prints where they are.
    steps.append([python, "-m", "stack.sbom"])
    targets = sorted(Path("fuzz").glob("fuzz_*.py"))
    share = FUZZ_SECONDS // max(len(targets), 1) - FUZZ_STARTUP_SECONDS
    seconds = max(share, FUZZ_MIN_SECONDS)
    steps.extend([python, str(target), f"-max_total_time={seconds}"] for target in targets)
    for step in steps:
        print(f"outlink test: {' '.join(step[1:])}", flush=True)
        if subprocess.run(step, check=False).returncode != 0:
            return 1
    with private_postgres() as pg_url:
        env = dict(os.environ)
        if pg_url:
            env["OUTLINK_TEST_POSTGRES_URL"] = pg_url
        else:
            print("outlink test: PostgreSQL not installed; PostgreSQL variants will be skipped")
        return subprocess.run(
            [python, "-m", "pytest", *pytest_args], env=env, check=False
        ).returncode
