"""The relay's module layout keeps its shape: no import cycle inside `relay_server/`,
and the core (`server.py`) names no feature -- features attach (`relay_server.features`).

Imports are read with `ast` at module level, as they run at import time: imports inside
functions and under ``if TYPE_CHECKING:`` do not count (they tie no knot at run time).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import relay_server

PACKAGE = Path(relay_server.__file__).parent
FEATURES = ("relay_server.desktop", "relay_server.telemetry")
CORE = "relay_server.server"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(nodes: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _runtime_imports(node.body)
            yield from _runtime_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _runtime_imports(block)
            for handler in node.handlers:
                yield from _runtime_imports(handler.body)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from _runtime_imports(node.body)


def imports_of(name: str, source: str, *, package: str) -> set[str]:
    """The `relay_server` modules that module `name` (in `package`) imports at run time."""
    found: set[str] = set()
    for node in _runtime_imports(ast.parse(source).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{anchor}.{base}" if base else anchor
        found.add(base)
        found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


def _package(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


GRAPH = {
    name: imports_of(name, path.read_text(), package=_package(name))
    for name, path in MODULES.items()
}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_relay_modules_import_each_other_without_a_cycle() -> None:
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("feature", FEATURES)
def test_the_relay_core_imports_no_feature(feature: str) -> None:
    path = MODULES[CORE]
    named = {
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in named if m == feature or m.startswith(feature + ".")}


SAMPLE = """
from typing import TYPE_CHECKING
import relay_server.tasks
from relay_server import audit
from . import links
if TYPE_CHECKING:
    from relay_server.server import Relay
else:
    from relay_server.metrics import RelayStats
try:
    from .desktop.events import DesktopEvents
except ImportError:
    pass
def later():
    from relay_server import cli
"""


def test_the_check_reads_what_runs_at_import_time() -> None:
    assert imports_of("relay_server.sample", SAMPLE, package="relay_server") == {
        "relay_server.tasks",
        "relay_server.audit",
        "relay_server",
        "relay_server.links",
        "relay_server.metrics",
        "relay_server.desktop.events",
    }
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
