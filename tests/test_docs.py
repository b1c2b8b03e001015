"""The documents that can drift from the code are held to it here.

Each test names one kind of drift a reader would be misled by: a requirement id that
resolves nowhere, a map that points at a module that moved, a changelog that lists
fewer decisions than exist.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "docs" / "requirements.md"
# The maps a newcomer reads first; every repository path they name must exist.
MAPS = (
    "README.md",
    "docs/architecture.md",
    "docs/requirements.md",
    "relay_server/README.md",
    "web/README.md",
)
CITING_SUFFIXES = {".py", ".md", ".html", ".js", ".toml", ".service", ".txt"}
SKIP_DIRS = {".git", ".venv", "var", "node_modules", "__pycache__"}
REQ_ID = re.compile(r"\bR([1-9][0-9]?)\b")
# A backticked token that looks like a path inside the repository: starts with one of
# its top-level folders and is made of path characters only.
TOP_LEVEL = sorted(
    p.name
    for p in ROOT.iterdir()
    if p.is_dir() and not p.name.startswith(".") and p.name not in SKIP_DIRS
)
PATH_TOKEN = re.compile(rf"`((?:{'|'.join(map(re.escape, TOP_LEVEL))})/[A-Za-z0-9_./-]*)`")
EN_DASH = "\u2013"  # the changelog writes ranges as typeset text


def _project_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS for part in rel.parts):
            continue
        if path.is_file() and path.suffix in CITING_SUFFIXES:
            out.append(path)
    return out


def _defined_requirements() -> set[int]:
    rows = re.findall(r"^\| R(\d+) \|", REQUIREMENTS.read_text(), flags=re.MULTILINE)
    return {int(r) for r in rows}


def test_requirements_page_defines_r1_to_r32_once() -> None:
    rows = re.findall(r"^\| R(\d+) \|", REQUIREMENTS.read_text(), flags=re.MULTILINE)
    assert sorted(int(r) for r in rows) == list(range(1, 33))


def test_every_cited_requirement_resolves() -> None:
    defined = _defined_requirements()
    unresolved = [
        f"{path.relative_to(ROOT)}: R{num}"
        for path in _project_files()
        for num in {int(m) for m in REQ_ID.findall(path.read_text(errors="replace"))}
        if num not in defined
    ]
    assert not unresolved, f"cited ids missing from docs/requirements.md: {unresolved}"


def test_paths_named_in_the_maps_exist() -> None:
    missing = []
    for name in MAPS:
        for token in PATH_TOKEN.findall((ROOT / name).read_text()):
            candidate = token.rstrip("/.")
            # A package's own README may name its modules relative to itself.
            here = (ROOT / name).parent
            if not (ROOT / candidate).exists() and not (here / candidate).exists():
                missing.append(f"{name}: {token}")
    assert not missing, f"docs name paths that do not exist: {missing}"


def test_changelog_lists_every_decision() -> None:
    numbers = sorted(
        int(p.name[:4]) for p in (ROOT / "docs" / "decisions").glob("[0-9][0-9][0-9][0-9]-*.md")
    )
    changelog = (ROOT / "CHANGELOG.md").read_text()
    match = re.search(rf"Decisions (\d{{4}}){EN_DASH}(\d{{4}})", changelog)
    assert match, "CHANGELOG.md should say which decisions exist ('Decisions 0001-NNNN')"
    assert (int(match[1]), int(match[2])) == (numbers[0], numbers[-1])


def test_the_online_rule_is_stated_as_the_code_has_it() -> None:
    """The maps state the staleness the portal really applies (`store.fleet.online`)."""
    import dataclasses

    from web.config import PortalConfig

    (field,) = [f for f in dataclasses.fields(PortalConfig) if f.name == "presence_stale_seconds"]
    stated = f"`presence_stale_seconds` ({field.default} s"
    for name in ("docs/architecture.md", "relay_server/README.md"):
        text = " ".join((ROOT / name).read_text().split())
        assert stated in text, f"{name} should state the online rule as {stated!r}…"
        assert "45 s" not in text  # the heartbeat rule the code never had
