"""docs/tunnel-protocol.md says what the code does: diagram, codes, limits, defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tunnel import ErrorCode, Priority, Settings, limits
from tunnel.aio import close_code_for
from tunnel.channel import mermaid
from tunnel.scheduler import DEFAULT_PRIORITIES

DOC = (Path(__file__).resolve().parents[2] / "docs" / "tunnel-protocol.md").read_text()


def table_rows(heading: str) -> list[list[str]]:
    """Cells of the first Markdown table after ``heading``, header and rule skipped."""
    section = DOC[DOC.index(heading) :]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def test_state_diagram_is_generated_from_the_table() -> None:
    block = re.search(
        r"<!-- BEGIN GENERATED.*?-->\n```mermaid\n(.*?)```\n<!-- END GENERATED -->", DOC, re.S
    )
    assert block is not None
    assert block.group(1).strip() == mermaid(), (
        "regenerate with: python -c 'from tunnel.channel import mermaid; print(mermaid())'"
    )


def test_error_codes_table() -> None:
    rows = table_rows("## 12. Error codes")
    assert [(int(code), name) for code, name, _ in rows] == [(c.value, c.name) for c in ErrorCode]


def test_limits_table() -> None:
    documented = {name: int(value) for name, value, _ in table_rows("## 13. Limits")}
    actual = {
        name: value
        for name, value in vars(limits).items()
        if name.isupper() and isinstance(value, int)
    }
    assert documented == actual


def test_settings_defaults_table() -> None:
    rows = table_rows("Tunable defaults")
    documented = {name: float(value) for name, value, _ in rows}
    defaults = Settings()
    actual = {f.name: float(getattr(defaults, f.name)) for f in dataclasses.fields(Settings)}
    assert documented == actual


def test_priority_table() -> None:
    rows = table_rows("## 8. Priorities")
    assert [(name, int(value)) for name, value, _ in rows] == [(p.name, p.value) for p in Priority]
    for name, _, kinds in rows:
        for kind in re.findall(r"`([a-z]+)`", kinds):
            assert DEFAULT_PRIORITIES[kind] is Priority[name]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_close_code_table(code: ErrorCode) -> None:
    rows = table_rows("| tunnel code")
    (default,) = [int(ws) for names, ws in rows if names.startswith("any other code")]
    explicit = {
        name.strip(): int(ws)
        for names, ws in rows
        if not names.startswith("any other code")
        for name in names.split(",")
    }
    expected = explicit.get(code.name, default)
    assert close_code_for(code) == expected
