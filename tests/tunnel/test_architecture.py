"""The architecture, checked on the imports: one rule per test, and a failure names the
offending file, line and import.

* The sans-I/O cores, `tunnel/` and `protocol/` outside their `aio/` adapters, import no
  I/O and no clock: messages in, messages out.
* `web/` and `agent/` never import `relay_server`: the portal and the device install no
  relay code; what they share with the relay is `protocol/`.
* `agent/` never imports `web` or `store`: a device installs neither the portal nor the
  database.
* The top-level packages import each other without a cycle. Imports under
  ``if TYPE_CHECKING:`` do not count here: they never run.

Imports are read with `ast` (nothing is imported): at module level and inside
functions, relative ones resolved to the absolute module.
"""

from __future__ import annotations

import ast
import itertools
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests")

SANS_IO = ("tunnel", "protocol")
ADAPTER = "aio"  # the one subpackage of a sans-I/O core that may do I/O
IO = frozenset(
    {
        "asyncio",
        "socket",
        "ssl",
        "selectors",
        "select",
        "subprocess",
        "threading",
        "multiprocessing",
        "time",
        "http",
        "urllib",
        "smtplib",
        "websockets",
        "sqlalchemy",
        "psycopg",
        "flask",
        "werkzeug",
        "asyncssh",
        "aiosmtpd",
    }
)
"""I/O, event loops, threads and clocks (a sans-I/O core takes ``now`` as an argument)."""


@dataclass(frozen=True, slots=True)
class Import:
    path: str  # relative to the tree's root
    line: int
    module: str  # absolute
    type_checking: bool  # under ``if TYPE_CHECKING:``

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}"


class _Reader(ast.NodeVisitor):
    def __init__(self, path: str, package: list[str]) -> None:
        self.path = path
        self.package = package  # the dotted package the file is in
        self.type_checking = False
        self.found: list[Import] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if not guarded:
            self.generic_visit(node)
            return
        outer, self.type_checking = self.type_checking, True
        for child in node.body:
            self.visit(child)
        self.type_checking = outer
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0:
            assert node.module is not None
            self._add(node, node.module)
            return
        base = self.package[: len(self.package) - node.level + 1]
        if node.module:
            self._add(node, ".".join([*base, node.module]))
        else:  # from . import name: a submodule, or a name in the package
            for alias in node.names:
                self._add(node, ".".join([*base, alias.name]))

    def _add(self, node: ast.stmt, module: str) -> None:
        self.found.append(Import(self.path, node.lineno, module, self.type_checking))


def imports_of(root: Path, package: str, *, skip: str | None = None) -> list[Import]:
    """Every import in ``package``'s files (those under its subpackage ``skip`` aside)."""
    found: list[Import] = []
    for path in sorted((root / package).rglob("*.py")):
        relative = path.relative_to(root)
        if skip is not None and relative.parts[1] == skip:
            continue
        reader = _Reader(str(relative), list(relative.parts[:-1]))
        reader.visit(ast.parse(path.read_text(), str(path)))
        found.extend(reader.found)
    return found


def io_imports(root: Path, package: str) -> list[Import]:
    return [i for i in imports_of(root, package, skip=ADAPTER) if i.top in IO]


def imports_of_packages(root: Path, package: str, forbidden: Iterable[str]) -> list[Import]:
    names = set(forbidden)
    return [i for i in imports_of(root, package) if i.top in names]


def cycles(root: Path, packages: Iterable[str]) -> list[list[Import]]:
    """Cycles between top-level packages, each as the imports that close it (one per
    edge); imports under ``if TYPE_CHECKING:`` are not edges."""
    names = set(packages)
    edges: dict[str, dict[str, Import]] = {p: {} for p in names}
    for package in sorted(names):
        for i in imports_of(root, package):
            if i.top in names and i.top != package and not i.type_checking:
                edges[package].setdefault(i.top, i)
    found: dict[frozenset[str], list[Import]] = {}
    for start in sorted(names):
        for path in _paths_back(edges, start):
            nodes = frozenset([start, *path])
            if nodes not in found:
                hops = [start, *path, start]
                found[nodes] = [edges[a][b] for a, b in itertools.pairwise(hops)]
    return list(found.values())


def _paths_back(edges: dict[str, dict[str, Import]], start: str) -> Iterator[list[str]]:
    """The shortest way from each of ``start``'s neighbours back to ``start``."""
    for first in sorted(edges[start]):
        queue, seen = [[first]], {first}
        while queue:
            path = queue.pop(0)
            if path[-1] == start:
                yield path[:-1]
                break
            for nxt in sorted(edges[path[-1]]):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append([*path, nxt])


def listing(imports: Iterable[object]) -> str:
    return "\n".join(str(i) for i in imports)


# -- the rules --------------------------------------------------------------------------------


def test_every_package_is_read() -> None:
    """The graph covers exactly what the wheel ships (pyproject's package list)."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(PACKAGES) == {p.rstrip("*") for p in find["packages"]["find"]["include"]}
    core = {i.path for i in imports_of(ROOT, "tunnel", skip=ADAPTER)}
    assert {"tunnel/connection.py", "tunnel/channel.py", "tunnel/flow.py"} <= core
    assert not any(path.startswith("tunnel/aio/") for path in core)  # the adapter may do I/O


def test_sans_io_cores_import_no_io() -> None:
    offenders = [i for package in SANS_IO for i in io_imports(ROOT, package)]
    assert not offenders, "sans-I/O code imports I/O:\n" + listing(offenders)


def test_portal_and_agent_import_no_relay_code() -> None:
    offenders = [
        i for p in ("web", "agent") for i in imports_of_packages(ROOT, p, ["relay_server"])
    ]
    assert not offenders, "import protocol/, not relay_server:\n" + listing(offenders)


def test_agent_imports_neither_portal_nor_store() -> None:
    offenders = imports_of_packages(ROOT, "agent", ["web", "store"])
    assert not offenders, "the agent must not import the portal or the store:\n" + listing(
        offenders
    )


def test_top_level_packages_import_each_other_without_a_cycle() -> None:
    found = cycles(ROOT, PACKAGES)
    assert not found, "import cycles between top-level packages:\n" + "\n\n".join(
        listing(cycle) for cycle in found
    )


# -- the rules catch what they are for ----------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_would_catch_offenders(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/frames.py": "import os\n\ndef later():\n    from asyncio import sleep\n",
            "core/aio/__init__.py": "import websockets\n",
            "core/sub/__init__.py": "from ..frames import later\nfrom . import deeper\n",
            "agent/__init__.py": "",
            "agent/cli.py": "def main():\n    import relay_server.client\n",
            "relay_server/__init__.py": "from agent import cli\n",
            "web/__init__.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import relay_server\n"
            ),
        },
    )
    assert [str(i) for i in io_imports(tmp_path, "core")] == ["core/frames.py:4 imports asyncio"]
    assert {i.module for i in imports_of(tmp_path, "core")} >= {
        "core.frames",
        "core.sub.deeper",
        "websockets",
    }
    assert [str(i) for i in imports_of_packages(tmp_path, "agent", ["relay_server"])] == [
        "agent/cli.py:2 imports relay_server.client"
    ]
    assert [i.path for i in imports_of_packages(tmp_path, "web", ["relay_server"])] == [
        "web/__init__.py"  # a boundary holds for type-checking imports too
    ]
    [cycle] = cycles(tmp_path, ["agent", "relay_server", "web", "core"])  # web's is not run
    assert [str(i) for i in cycle] == [
        "agent/cli.py:2 imports relay_server.client",
        "relay_server/__init__.py:1 imports agent",
    ]
