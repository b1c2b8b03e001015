"""The example configs in ``deploy/`` load with the real loader and never copy a default.

An example states a default as a comment, ``# key = value`` (one space after ``#``,
at the start of the line, inside its table), and sets a key only to show a value an
operator chooses. So:

* every stated default must equal the code's (the stale keepalive an example once
  advertised would fail here), and
* every key an example sets must differ from the code's default: an installed file
  that copies a default pins it, and a later tuning of the code never reaches the
  devices (how real agents kept keepalive 15/20 s after decision 0005).

Indented comments (``#   proxy = "http://..."``) are prose, not stated defaults.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import AGENT_FILE
from agent.telemetry.config import TELEMETRY_FILE as AGENT_TELEMETRY_FILE
from relay_server.config import RELAY_FILE
from relay_server.telemetry.config import TELEMETRY_FILE as RELAY_TELEMETRY_FILE
from tomlconfig import ConfigError, ConfigFile
from web.config import PORTAL_FILE

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLES: dict[str, ConfigFile[Any]] = {
    "agent.example.toml": AGENT_FILE,
    "agent-telemetry.example.toml": AGENT_TELEMETRY_FILE,
    "relay.example.toml": RELAY_FILE,
    "relay-telemetry.example.toml": RELAY_TELEMETRY_FILE,
    "portal.example.toml": PORTAL_FILE,
}
#: What an example expects from the environment (secrets it keeps out of the file).
ENVIRONMENT = {"OUTLINK_TELEMETRY_WEBHOOKS_OPS_SECRET": "a webhook secret of 32 characters"}

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")
_STATED = re.compile(r"^# ([a-z_][a-z0-9_]*) = (.*)$")
_SET = re.compile(r"^([a-z_][a-z0-9_]*)\s*=")


@dataclass(frozen=True)
class Key:
    """One key an example sets or states: its line (0-based) and path in the config."""

    line: int
    path: tuple[str | int, ...]
    stated: bool  # a commented-out default

    def where(self, name: str) -> str:
        return f"deploy/{name}:{self.line + 1} {'.'.join(map(str, self.path))}"


def keys(lines: list[str]) -> list[Key]:
    found: list[Key] = []
    table: tuple[str | int, ...] = ()
    items: dict[str, int] = {}
    for number, line in enumerate(lines):
        if header := _HEADER.match(line):
            parts: tuple[str | int, ...] = tuple(header[2].split("."))
            if header[1] == "[[":
                items[header[2]] = items.get(header[2], -1) + 1
                parts = (*parts, items[header[2]])
            table = parts
        elif stated := _STATED.match(line):
            found.append(Key(number, (*table, stated[1]), stated=True))
        elif assigned := _SET.match(line):
            found.append(Key(number, (*table, assigned[1]), stated=False))
    return found


def value(config: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        if isinstance(part, int):
            config = config[part]
        elif isinstance(config, Mapping):
            config = config.get(part)
        elif isinstance(part, str) and hasattr(config, part):
            config = getattr(config, part)
        else:  # a value built from its table (a severity table): compare all of it
            return vars(config)
    return config


def load(declaration: ConfigFile[Any], lines: list[str]) -> Any:
    raw = tomllib.loads("\n".join(lines))
    return declaration.parse(raw, base=DEPLOY, environ=ENVIRONMENT, source="example")


def test_every_example_is_checked() -> None:
    assert {p.name for p in DEPLOY.glob("*.example.toml")} == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_loads(name: str) -> None:
    EXAMPLES[name].load(DEPLOY / name, environ=ENVIRONMENT)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_states_defaults_and_copies_none(name: str) -> None:
    declaration = EXAMPLES[name]
    lines = (DEPLOY / name).read_text(encoding="utf-8").splitlines()
    config = load(declaration, lines)
    skip = 1 if declaration.table else 0  # the portal's keys live in [portal]
    found = keys(lines)
    assert any(k.stated for k in found), f"deploy/{name} states no default"
    for key in found:
        changed = list(lines)
        if key.stated:
            changed[key.line] = lines[key.line].removeprefix("# ")
        else:
            changed[key.line] = "# " + lines[key.line]
        try:
            other = load(declaration, changed)
        except ConfigError as exc:
            assert not key.stated, f"{key.where(name)}: stated default refused: {exc}"
            continue  # a required key (a source's name): it has no default to copy
        mine, theirs = value(config, key.path[skip:]), value(other, key.path[skip:])
        if key.stated:
            assert theirs == mine, f"{key.where(name)}: example says {theirs!r}, code {mine!r}"
        else:
            assert theirs != mine, (
                f"{key.where(name)}: sets the default {mine!r}; state it as '# key = value'"
            )
