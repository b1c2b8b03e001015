"""Every command line answers ``--version`` with the release, and its ``--help`` reads as
plain text: descriptions once taken from docstrings leaked reStructuredText markup.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator
from typing import Any

import click
import pytest

from agent.cli import main as agent_main
from agent.telemetry.cli import main as agent_telemetry_main
from pki.cli import main as pki_main
from relay_server.cli import main as relay_main
from relay_server.telemetry.__main__ import main as relay_telemetry_main
from release import VERSION
from sim.console import main as sim_console_main
from sim.device import main as sim_main
from sim.receivers import main as sim_receivers_main
from web.cli import outlink as portal

Main = Callable[[list[str]], Any]

#: The argparse programs: (prog, main). The installed console scripts come first.
ARGPARSE_CLIS: list[tuple[str, Main]] = [
    ("outlink-agent", agent_main),
    ("outlink-relay", relay_main),
    ("outlink-pki", pki_main),
    ("python -m agent.telemetry", agent_telemetry_main),
    ("python -m relay_server.telemetry", relay_telemetry_main),
    ("python -m sim", sim_main),
    ("python -m sim.console", sim_console_main),
    ("python -m sim.receivers", sim_receivers_main),
]
#: Demo tools ./outlink up starts itself; they are not installed as commands.
WITHOUT_VERSION = {"python -m sim", "python -m sim.console", "python -m sim.receivers"}

#: reStructuredText that reads as noise in a terminal: ``literal``, `ref`, :role:, **bold**,
#: and directives.
MARKUP = re.compile(r"`|\*\*|:[a-z]+:|^\s*\.\. ", re.MULTILINE)


class _Built(Exception):
    """Raised instead of parsing, carrying the parser that main() built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def parser_of(main: Main, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser `main` builds, caught at its parse_args() call (so nothing else runs)."""

    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Built(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(_Built) as built:
            main([])
    return built.value.parser


def argparse_helps(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """(prog, help text) of `parser` and of every subcommand below it."""
    yield parser.prog, parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from argparse_helps(sub)


def click_helps(command: click.Command, ctx: click.Context) -> Iterator[tuple[str, str]]:
    yield ctx.command_path, command.get_help(ctx)
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from click_helps(sub, click.Context(sub, info_name=name, parent=ctx))


def no_markup(helps: Iterator[tuple[str, str]]) -> None:
    leaks = {prog: MARKUP.findall(text) for prog, text in helps if MARKUP.search(text)}
    assert leaks == {}


@pytest.mark.parametrize(("prog", "main"), ARGPARSE_CLIS, ids=[p for p, _ in ARGPARSE_CLIS])
def test_argparse_help_is_plain_text(
    prog: str, main: Main, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = parser_of(main, monkeypatch)
    assert parser.prog == prog
    assert parser.description  # says what the program is for
    no_markup(argparse_helps(parser))


@pytest.mark.parametrize(
    ("prog", "main"),
    [(p, m) for p, m in ARGPARSE_CLIS if p not in WITHOUT_VERSION],
    ids=[p for p, _ in ARGPARSE_CLIS if p not in WITHOUT_VERSION],
)
def test_argparse_version(prog: str, main: Main, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"{prog} {VERSION}\n"


def test_portal_help_is_plain_text() -> None:
    ctx = click.Context(portal, info_name="outlink-portal")
    no_markup(click_helps(portal, ctx))


def test_portal_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        portal.main(["--version"], prog_name="outlink-portal")
    assert done.value.code == 0
    assert capsys.readouterr().out == f"outlink-portal {VERSION}\n"


def test_version_is_the_installed_distribution() -> None:
    from importlib.metadata import version

    assert version("outlink") == VERSION
