"""``outlink-agent audit show|verify``: the agent's local audit log (R21).

``audit show [--tail N] [--json]`` prints it (readable on the device); ``audit verify``
walks its hash chain and exits 0 (intact) or 1 (the first broken line is printed).
``agent/cli.py`` mounts these; ``python -m agent.telemetry audit ...`` works too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from agent.audit import read_entries, verify
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, load_cli_config
from agent.telemetry.config import TelemetryConfig, load_cli_telemetry_config
from release import VERSION
from tomlconfig import ConfigError

logger = logging.getLogger("agent")

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_USAGE = 64


def add_audit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``audit`` command with ``show`` and ``verify``."""
    sp = sub.add_parser("audit", help="show or verify the local audit log")
    sp.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="agent TOML file")
    sp.add_argument("--telemetry", help="telemetry TOML file (default: next to --config)")
    audit = sp.add_subparsers(dest="audit_command", required=True)
    show = audit.add_parser("show", help="print the audit log")
    show.add_argument("--tail", type=int, default=0, help="only the last N entries")
    show.add_argument("--json", action="store_true", help="raw JSON lines")
    audit.add_parser("verify", help="check the hash chain; exit 1 if it is broken")


def audit_path(config: AgentConfig, telemetry: TelemetryConfig) -> Path:
    return Path(telemetry.resolved(Path(config.data_dir)).audit_file)


def cmd_audit(config: AgentConfig, args: argparse.Namespace) -> int:
    path = audit_path(config, load_cli_telemetry_config(args.telemetry, args.config))
    if not path.exists():
        print(f"no audit log at {path}")
        return EXIT_OK
    if args.audit_command == "verify":
        verdict = verify(path)
        if verdict.ok:
            print(f"audit log intact: {verdict.entries} entries ({path})")
            return EXIT_OK
        print(
            f"audit log BROKEN at line {verdict.bad_line}: {verdict.problem} "
            f"({verdict.entries} entries verified before it; {path})"
        )
        return EXIT_TAMPERED
    lines = list(read_entries(path))
    if args.tail > 0:
        lines = lines[-args.tail :]
    for number, entry, raw in lines:
        if args.json or entry is None:
            print(raw)
            continue
        detail = json.dumps(entry.get("detail", {}), sort_keys=True)
        print(
            f"{entry.get('n', number):>6} {entry.get('ts', '?')} {entry.get('kind', '?'):<12} "
            f"{entry.get('outcome', '?'):<10} {detail}"
        )
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.telemetry", description="The agent's local audit log."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_audit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return cmd_audit(load_cli_config(args.config), args)
    except ConfigError as exc:
        print(f"outlink-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
