"""The core stays sans-I/O: no module of tunnel/ outside tunnel/aio/ imports I/O or clocks."""

from __future__ import annotations

import ast
from pathlib import Path

import tunnel

FORBIDDEN = {"asyncio", "socket", "websockets", "time", "threading", "selectors", "ssl"}
CORE = Path(tunnel.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name.split(".")[0] for name in names}


def core_modules() -> list[Path]:
    return [p for p in sorted(CORE.rglob("*.py")) if "aio" not in p.relative_to(CORE).parts]


def test_core_modules_are_found() -> None:
    names = {p.name for p in core_modules()}
    assert {"connection.py", "frames.py", "channel.py", "flow.py"} <= names
    assert "tunnel.py" not in names  # tunnel/aio/ is the adapter, allowed to do I/O


def test_core_imports_no_io() -> None:
    offenders = {
        str(path.relative_to(CORE)): sorted(imported_modules(path) & FORBIDDEN)
        for path in core_modules()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_would_catch_an_offender(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import os\nfrom asyncio import sleep\nimport websockets.asyncio\n")
    assert imported_modules(sample) & FORBIDDEN == {"asyncio", "websockets"}
