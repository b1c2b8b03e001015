"""``outlink-agent audit show|verify``, and ``run`` with telemetry.

``audit show [--tail N] [--json]`` prints the local audit log (R21: readable on the
device); ``audit verify`` walks its hash chain and exits 0 (intact) or 1 (the first
broken line is printed). ``run`` is ``outlink-agent run`` plus `TelemetryAgent`.

Until ``agent/cli.py`` carries them, ``python -m agent.telemetry run|audit ...`` offers
the same commands. To wire them into ``outlink-agent``:

* ``_parser()``: ``add_audit_parser(sub)``, and ``--telemetry`` on ``run``;
* ``main()``: ``if args.command == "audit": return cmd_audit(config, args)``;
* ``cmd_run``: run `run_agent` (it is ``agent.cli._run`` plus the `TelemetryAgent`:
  built after the manager, registered, run beside it, watched by the watchdog) with
  ``load_telemetry_config(find_config(args.telemetry, args.config))``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from agent.builtin import register_builtin
from agent.cli import _load, _lower_priority  # the agent's own config and niceness rules
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError
from agent.connection import ConnectionManager
from agent.control import Registry
from agent.status import StatusBook
from agent.telemetry.audit import read_entries, verify
from agent.telemetry.config import (
    TelemetryConfig,
    TelemetryConfigError,
    find_config,
    load_telemetry_config,
)
from agent.telemetry.service import TelemetryAgent
from agent.watchdog import Notifier, watchdog_loop
from relay_server.logs import configure as configure_logging

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
    path = audit_path(config, _telemetry_config(args))
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


def _telemetry_config(args: argparse.Namespace) -> TelemetryConfig:
    return load_telemetry_config(find_config(args.telemetry, args.config))


# -- run ---------------------------------------------------------------------------------


def cmd_run(config: AgentConfig, telemetry: TelemetryConfig) -> int:
    if not config.relay_urls:
        raise ConfigError("relay_urls: at least one wss:// relay URL is needed to run")
    configure_logging(config.log_level, config.log_format)
    _lower_priority(config.nice)
    asyncio.run(run_agent(config, telemetry))
    return EXIT_OK


async def run_agent(config: AgentConfig, telemetry_config: TelemetryConfig) -> None:
    """``outlink-agent run`` with telemetry: until SIGTERM/SIGINT."""
    notifier = Notifier()
    registry = Registry()
    register_builtin(registry)
    manager = ConnectionManager(
        config,
        registry,
        status=StatusBook(Path(config.data_dir)),
        notifier=notifier,
        environ=os.environ,
    )
    telemetry = TelemetryAgent(
        telemetry_config,
        Path(config.data_dir),
        connected=manager.connected,
        # ConnectionManager has no public accessor for its tunnel yet.
        tunnel=lambda: manager._tunnel,
    )
    telemetry.register(registry)
    loop = asyncio.get_running_loop()

    def stop(signame: str) -> None:
        logger.info("= %s: stopping", signame)
        notifier.stopping()
        manager.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    runner = asyncio.create_task(manager.run(), name="connection-manager")
    collecting = asyncio.create_task(telemetry.run(), name="telemetry")
    watchdog = None
    if notifier.watchdog_interval is not None:
        watchdog = asyncio.create_task(
            watchdog_loop(
                notifier,
                notifier.watchdog_interval,
                healthy=lambda: not runner.done() and not collecting.done(),
            ),
            name="watchdog",
        )
    notifier.ready(f"dialling {config.relay_urls[0]}")
    logger.info("= outlink-agent started (pid %d), relays: %s", os.getpid(), config.relay_urls)
    try:
        await runner
    finally:
        collecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collecting
        if watchdog is not None:
            watchdog.cancel()
        logger.info("= outlink-agent stopped")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.telemetry", description="Outlink agent with telemetry."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("run", help="keep the tunnel up and send telemetry (foreground)")
    sp.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="agent TOML file")
    sp.add_argument("--telemetry", help="telemetry TOML file (default: next to --config)")
    add_audit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _load(args)
        if args.command == "audit":
            return cmd_audit(config, args)
        return cmd_run(config, _telemetry_config(args))
    except (ConfigError, TelemetryConfigError) as exc:
        print(f"outlink-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
