"""One source of version ranges: requirements/*.txt, shared by requirements.txt and the
extras pyproject.toml builds from them (pip install 'outlink[agent]' and so on).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ROOT / "requirements"
ROLES = {"agent", "relay", "portal", "demo"}


def group_files() -> set[str]:
    return {f"requirements/{p.name}" for p in GROUPS.glob("*.txt")}


def requirements(path: str) -> list[Requirement]:
    lines = (ROOT / path).read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def dynamic() -> dict[str, list[str]]:
    """Which files build the base dependencies ("") and each extra."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    files = {extra: spec["file"] for extra, spec in table["optional-dependencies"].items()}
    return {"": table["dependencies"]["file"], **files}


def test_requirements_txt_is_every_group_and_nothing_else() -> None:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    included = [line.removeprefix("-r ") for line in lines if line and not line.startswith("#")]
    assert sorted(included) == sorted(group_files())  # a bare requirement here is in no extra


def test_each_requirement_has_one_home() -> None:
    seen: dict[str, str] = {}
    for path in sorted(group_files()):
        for req in requirements(path):
            name = canonicalize_name(req.name)
            assert name not in seen, f"{req.name} is in {seen.get(name)} and {path}"
            seen[name] = path


def test_runtime_requirements_are_bounded() -> None:
    """A device installs a major version we ran the tests with, never the next one."""
    for path in group_files():
        for req in requirements(path):
            operators = {spec.operator for spec in req.specifier}
            assert {">=", "<"} <= operators, f"{path}: {req}"


def test_extras_are_built_from_the_groups() -> None:
    files = dynamic()
    assert set(files) == {"", "all"} | ROLES
    assert files[""] == ["requirements/base.txt"]  # what every role needs
    for extra, paths in files.items():
        assert set(paths) <= group_files(), extra
    assert set(files["all"]) == group_files() - {"requirements/base.txt"}


def test_the_agent_installs_no_server_or_demo_package() -> None:
    agent = {canonicalize_name(r.name) for p in dynamic()["agent"] for r in requirements(p)}
    assert agent.isdisjoint({"flask", "gunicorn", "psycopg", "sqlalchemy", "aiosmtpd"})


def test_every_shipped_package_is_type_checked() -> None:
    """`./outlink test` runs mypy over the packages the wheel ships, no fewer."""
    from stack.testrun import MYPY_PACKAGES

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = {pattern.rstrip("*") for pattern in find["packages"]["find"]["include"]}
    assert set(MYPY_PACKAGES) == shipped
