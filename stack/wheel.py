"""The wheel, and one environment per role installed from it as a device or a server would.

Shared by the SBOM step of ``./outlink test`` (stack/sbom.py) and the packaging test
(tests/packaging/test_wheel.py), so both look at the same installs.

The wheel is built from a copy of the source tree: a build in place would leave
``build/`` behind, whose stale files setuptools would ship next time. A role's
environment has no pip of its own (the outer pip installs into it with ``--python``), so
it holds exactly ``outlink[role]`` and what that pulls in, nothing of the installer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

#: What a build needs from the checkout and what it must not pick up.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "var",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".*_cache",
    ".hypothesis",
    "node_modules",
)
#: The environment of installs and installed commands: nothing may reach the source tree.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
#: How long one role's install may take (pip's cache makes a repeat a few seconds).
INSTALL_TIMEOUT = 800


def copy_source(root: Path, dest: Path) -> Path:
    """Copy the checkout at ``root`` to ``dest`` without build leftovers; return ``dest``."""
    shutil.copytree(root, dest, ignore=NOT_SOURCE)
    return dest


def build_wheel(source: Path, out: Path) -> Path:
    """Build the one wheel of the source copy ``source`` into ``out``; return its path."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        cwd="/",
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the wheel:\n{result.stdout}\n{result.stderr}")
    (built,) = out.glob("outlink-*.whl")
    return built


def install_roles(wheel: Path, base: Path, roles: Iterable[str]) -> dict[str, Path]:
    """Install ``outlink[role]`` into a fresh environment ``base/role`` per role, in parallel.

    Returns each role's environment folder. Raises RuntimeError with pip's output when
    an install fails.
    """
    install = 'set -e; "$0" -m venv --without-pip "$1"; "$0" -m pip --python "$1/bin/python" '
    install += 'install -q "$2"'
    jobs = {
        role: subprocess.Popen(
            ["sh", "-c", install, sys.executable, str(base / role), f"{wheel}[{role}]"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=CLEAN_ENV,
        )
        for role in roles
    }
    failed = []
    for role, job in jobs.items():
        output, _ = job.communicate(timeout=INSTALL_TIMEOUT)
        if job.returncode != 0:
            failed.append(f"installing outlink[{role}]:\n{output}")
    if failed:
        raise RuntimeError("\n".join(failed))
    return {role: base / role for role in jobs}
