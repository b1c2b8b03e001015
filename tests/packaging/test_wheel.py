"""The wheel, installed per role as a device or a server would: ``pip install 'outlink[agent]'``
into a fresh virtual environment, then the role's commands run from there.

One wheel is built from a copy of the source tree and the four role environments are
installed in parallel, with pip's cache and network, by stack/wheel.py (which the SBOM
step of ``./outlink test`` uses too).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from stack.sbom import IncompleteSBOM, python_components, role_sbom, vendored_components
from stack.wheel import CLEAN_ENV, build_wheel, copy_source, install_roles

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("agent", "relay", "portal", "demo")
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
    return copy_source(ROOT, tmp_path_factory.mktemp("source") / "outlink")


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(source, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def venvs(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One fresh environment per role, with only ``outlink[role]`` installed in it."""
    made = install_roles(wheel, tmp_path_factory.mktemp("venvs"), ROLES)
    return {role: venv / "bin" for role, venv in made.items()}


@pytest.fixture(scope="module")
def version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def installed(bin_dir: Path) -> set[str]:
    """The distributions in a role's environment (which has no pip: the outer one lists)."""
    listing = run(
        sys.executable, "-m", "pip", "--python", bin_dir / "python", "list", "--format=json"
    )
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


def test_sbom_of_each_role(venvs: dict[str, Path]) -> None:
    """What ./outlink test records: outlink[role] as the subject, each installed distribution
    with version and licence, and the vendored front-end libraries as npm components."""
    uplot = json.loads((ROOT / "web/static/vendor/uplot/package.json").read_text())
    boms = {role: role_sbom(venvs[role].parent, role) for role in ("agent", "portal")}
    for role, bom in boms.items():
        subject = bom["metadata"]["component"]
        assert (subject["name"], subject["type"]) == ("outlink", "application")
        assert subject["properties"] == [{"name": "outlink:role", "value": role}]
        (npm,) = [c for c in bom["components"] if c["purl"].startswith("pkg:npm/")]
        assert npm["purl"] == f"pkg:npm/uplot@{uplot['version']}"
        assert npm["licenses"][0]["license"]["id"] == "MIT"
        assert "Permission is hereby granted" in npm["licenses"][0]["license"]["text"]["content"]
        (edges,) = [d for d in bom["dependencies"] if d["ref"] == subject["bom-ref"]]
        assert npm["bom-ref"] in edges["dependsOn"]
        # Exactly the role's install: no installer, and pip list agrees.
        python = python_components(bom)
        assert set(python) == installed(venvs[role]) - {"outlink"}
        assert {"pip", "setuptools"}.isdisjoint(python)
    assert "flask" in python_components(boms["portal"])
    assert "flask" not in python_components(boms["agent"])


def test_a_vendored_library_without_a_licence_file_is_refused(tmp_path: Path) -> None:
    library = tmp_path / "web/static/vendor/chart"
    library.mkdir(parents=True)
    (library / "package.json").write_text('{"name": "chart", "version": "1.0.0", "license": "MIT"}')
    with pytest.raises(IncompleteSBOM, match="LICENSE"):
        vendored_components(tmp_path)
    (library / "LICENSE").write_text("MIT License")
    (component,) = vendored_components(tmp_path)
    assert component["purl"] == "pkg:npm/chart@1.0.0"
