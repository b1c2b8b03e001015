"""The wheel, installed per role as a device or a server would: ``pip install 'outlink[agent]'``
into a fresh virtual environment, then the role's commands run from there.

One wheel is built from a copy of the source tree (a build in place would leave
``build/`` behind, whose stale files setuptools would ship next time); the four role
environments are installed in parallel, with pip's cache and network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("agent", "relay", "portal", "demo")
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
#: Files in the packages that nothing reads at run time.
NOT_SHIPPED = {"README.md"}
#: Server-side distributions a device must not carry (nor the demo's SMTP server).
NOT_ON_A_DEVICE = {
    "flask",
    "gunicorn",
    "psycopg",
    "psycopg-binary",
    "sqlalchemy",
    "alembic",
    "aiosmtpd",
    "flask-wtf",
    "prometheus-client",
}
#: Every module of these packages must import in the role's environment (so no lazy
#: import needs a package the role did not install).
ROLE_PACKAGES = {
    "agent": ["agent", "desktop", "tunnel", "protocol", "jsonlog", "telemetry", "release"],
    "relay": ["relay_server", "store", "pki", "protocol", "tunnel", "jsonlog", "telemetry"],
    "portal": ["web", "store", "pki", "protocol", "tunnel", "telemetry"],
}
#: Skips modules that run something when imported: entry scripts, gunicorn's settings
#: file, alembic's migration environment.
IMPORT_ALL = """
import importlib, pkgutil, sys
skip = ("web.gunicorn_conf", "store.migrations")
for top in sys.argv[1:]:
    for info in pkgutil.walk_packages(importlib.import_module(top).__path__, top + "."):
        if not info.name.endswith(".__main__") and not info.name.startswith(skip):
            importlib.import_module(info.name)
"""
#: The environment of the installed commands: nothing may reach the source tree.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(*argv: str | Path, cwd: Path = Path("/"), env: dict[str, str] = CLEAN_ENV) -> str:
    """Run a command; its stdout, or a failure that shows what it printed.

    The default working directory is neutral: ``python -m`` would import from it.
    """
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (
        f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("source") / "outlink"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    return tree


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, source)
    (built,) = out.glob("outlink-*.whl")
    return built


@pytest.fixture(scope="module")
def venvs(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One fresh environment per role, with only ``outlink[role]`` installed in it."""
    base = tmp_path_factory.mktemp("venvs")
    install = 'set -e; "$0" -m venv "$1"; "$1/bin/python" -m pip install -q "$2"'
    jobs = {
        role: subprocess.Popen(
            ["sh", "-c", install, sys.executable, base / role, f"{wheel}[{role}]"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=CLEAN_ENV,
        )
        for role in ROLES
    }
    for role, job in jobs.items():
        output, _ = job.communicate(timeout=800)
        assert job.returncode == 0, f"installing outlink[{role}]:\n{output}"
    return {role: base / role / "bin" for role in ROLES}


@pytest.fixture(scope="module")
def version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def installed(bin_dir: Path) -> set[str]:
    listing = run(bin_dir / "python", "-m", "pip", "list", "--format=json")
    return {canonicalize_name(entry["name"]) for entry in json.loads(listing)}


def answers(bin_dir: Path, command: str, version: str) -> None:
    """``--version`` names the release, ``--help`` shows usage."""
    assert run(bin_dir / command, "--version") == f"{command} {version}\n"
    assert run(bin_dir / command, "--help").lower().startswith("usage:")


def imports_everything(bin_dir: Path, role: str) -> None:
    run(bin_dir / "python", "-c", IMPORT_ALL, *ROLE_PACKAGES[role])


def test_the_wheel_ships_every_file_of_its_packages(source: Path, wheel: Path) -> None:
    pyproject = tomllib.loads((source / "pyproject.toml").read_text())
    tops = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    shipped = set(zipfile.ZipFile(wheel).namelist())
    missing = [
        str(path.relative_to(source))
        for top in tops
        for path in sorted((source / top).rglob("*"))
        if path.is_file()
        and path.name not in NOT_SHIPPED
        and str(path.relative_to(source)) not in shipped
    ]
    assert missing == []
    assert {"web/templates/base.html", "web/static/portal.css", "store/alembic.ini"} <= shipped


def test_agent(venvs: dict[str, Path], version: str) -> None:
    bin_dir = venvs["agent"]
    assert installed(bin_dir).isdisjoint(NOT_ON_A_DEVICE)
    answers(bin_dir, "outlink-agent", version)
    imports_everything(bin_dir, "agent")


def test_relay(venvs: dict[str, Path], version: str, tmp_path: Path) -> None:
    bin_dir = venvs["relay"]
    assert "flask" not in installed(bin_dir)
    answers(bin_dir, "outlink-relay", version)
    answers(bin_dir, "outlink-pki", version)
    assert "configuration OK" in run(bin_dir / "outlink-relay", "--check-config", cwd=tmp_path)
    # The relay migrates at start with store.db.upgrade, as outlink-pki does here: both need
    # alembic.ini and the migrations from the installed package.
    token = run(
        bin_dir / "outlink-pki",
        "token",
        "create",
        "--db",
        f"sqlite:///{tmp_path}/r.db",
        "--customer",
        "acme",
        "--site",
        "lab",
        cwd=tmp_path,
    )
    assert token.strip()
    imports_everything(bin_dir, "relay")


def test_portal(venvs: dict[str, Path], version: str, tmp_path: Path) -> None:
    bin_dir = venvs["portal"]
    assert installed(bin_dir).isdisjoint({"aiosmtpd", "mss", "pillow", "prometheus-client"})
    answers(bin_dir, "outlink-portal", version)
    answers(bin_dir, "outlink-pki", version)
    env = {
        **CLEAN_ENV,
        "OUTLINK_PORTAL_DATA_DIR": str(tmp_path / "portal"),
        "OUTLINK_PORTAL_DATABASE_URL": f"sqlite:///{tmp_path}/portal.db",
    }
    assert "first administrator created" in run(bin_dir / "outlink-portal", "init", env=env)
    # The installed app renders a page from its templates and serves its static files.
    page = """
from web import create_app
client = create_app().test_client()
login = client.get("/login", base_url="https://localhost")
css = client.get("/static/portal.css", base_url="https://localhost")
print(login.status_code, b'name="password"' in login.data, css.status_code)
"""
    assert run(bin_dir / "python", "-c", page, cwd=tmp_path, env=env) == "200 True 200\n"
    imports_everything(bin_dir, "portal")


def test_demo(venvs: dict[str, Path]) -> None:
    bin_dir = venvs["demo"]
    assert "aiosmtpd" in installed(bin_dir)
    for module in ("sim", "sim.receivers"):
        assert run(bin_dir / "python", "-m", module, "--help").lower().startswith("usage:")
