"""``outlink-agent`` (also ``python -m agent``): enroll, run, status.

* ``enroll --token T [--url wss://relay/enroll]``: get this device its certificate.
* ``run``: keep the tunnel up until SIGTERM/SIGINT (foreground; systemd runs it
  as Type=notify with a watchdog).
* ``status``: what the running agent last wrote (status.json, alarms.json).
  Exit code 0 = connected, 1 = not connected, 2 = an alarm needs a human.
* ``desktop accept|deny|end SESSION_ID``: answer a remote desktop request, or end a
  session, as the person at the device (through a file drop the running agent
  watches; see agent.desktop.answers). Exit 0 = done, 1 = refused or nothing active.

Every command takes ``--config`` (default /etc/outlink/agent.toml; a missing
default file means built-in defaults + ``OUTLINK_AGENT_*`` environment).
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
import urllib.parse
from pathlib import Path

from agent.audit import AuditLog
from agent.builtin import register_builtin
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, load_cli_config
from agent.connection import ConnectionManager
from agent.control import Registry
from agent.desktop import answers
from agent.desktop.service import service_from_config
from agent.enroll import EnrollmentError, enroll
from agent.proxy import redact, resolve_proxies
from agent.status import StatusBook, read_status
from agent.telemetry.cli import add_audit_parser, audit_path, cmd_audit
from agent.telemetry.config import TelemetryConfig, load_cli_telemetry_config
from agent.telemetry.service import TelemetryAgent
from agent.watchdog import Notifier, watchdog_loop
from jsonlog import configure as configure_logging
from release import VERSION
from tomlconfig import ConfigError

logger = logging.getLogger("agent")

EXIT_OK = 0
EXIT_NOT_CONNECTED = 1
EXIT_ALARM = 2
EXIT_USAGE = 64  # EX_USAGE: bad config or arguments


# -- run ---------------------------------------------------------------------------------


def cmd_run(config: AgentConfig, telemetry: TelemetryConfig) -> int:
    if not config.relay_urls:
        raise ConfigError("relay_urls: at least one wss:// relay URL is needed to run")
    configure_logging(config.log_level, config.log_format)
    _lower_priority(config.nice)
    asyncio.run(_run(config, telemetry))
    return EXIT_OK


def _lower_priority(niceness: int) -> None:
    """R32: run at (at least) `niceness`; the device's own work comes first.

    Absolute, not an increment, so a unit's Nice= and this setting never add up.
    Never raises: a failed renice is worth a warning, not a dead agent.
    """
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < niceness:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError as exc:
        logger.warning("! cannot lower priority: %s", exc)


async def _run(config: AgentConfig, telemetry_config: TelemetryConfig) -> None:
    notifier = Notifier()
    registry = Registry()
    register_builtin(registry)
    audit = AuditLog(audit_path(config, telemetry_config))  # one chain for every feature
    desktop = service_from_config(config, os.environ, audit=audit)
    if desktop is not None:
        desktop.register(registry)
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
        tunnel=lambda: manager.tunnel,
        audit=audit,
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
        if desktop is not None:
            await desktop.aclose()
        if watchdog is not None:
            watchdog.cancel()
        logger.info("= outlink-agent stopped")


# -- enroll ------------------------------------------------------------------------------


def cmd_enroll(config: AgentConfig, args: argparse.Namespace) -> int:
    configure_logging(config.log_level, "text")
    token = args.token or os.environ.get("OUTLINK_AGENT_ENROLL_TOKEN", "")
    if not token:
        raise ConfigError("enroll: pass --token or set OUTLINK_AGENT_ENROLL_TOKEN")
    url = args.url or _enroll_url(config)
    proxy = resolve_proxies(url, config, os.environ)[0]
    logger.info("> enrolling at %s via %s", url, redact(proxy))
    try:
        identity = asyncio.run(
            enroll(
                url,
                Path(config.ca_file),
                token,
                Path(config.identity_dir),
                proxy=proxy,
                hostname=args.hostname,
                force=args.force,
            )
        )
    except EnrollmentError as exc:
        print(f"enrolment failed ({exc.code}): {exc}", file=sys.stderr)
        return 1
    print(f"enrolled as device {identity.device_id} ({identity.customer}/{identity.site})")
    return EXIT_OK


def _enroll_url(config: AgentConfig) -> str:
    """The first relay's URL with the path /enroll (same host and port: one TLS port)."""
    if not config.relay_urls:
        raise ConfigError("enroll: pass --url or configure relay_urls")
    parts = urllib.parse.urlsplit(config.relay_urls[0])
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/enroll", "", ""))


# -- status ------------------------------------------------------------------------------


def cmd_status(config: AgentConfig, args: argparse.Namespace) -> int:
    status = read_status(Path(config.data_dir))
    alarms = status.get("alarms") or []
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        _print_status(status)
    if alarms:
        return EXIT_ALARM
    return EXIT_OK if status.get("connected") else EXIT_NOT_CONNECTED


def _print_status(status: dict[str, object]) -> None:
    if not status.get("state"):
        print("no status yet (has the agent run with this data_dir?)")
    for key in ("state", "connected", "relay", "proxy", "since", "device_id", "pid", "updated"):
        if status.get(key) is not None:
            print(f"{key:>15}: {status[key]}")
    error = status.get("last_error")
    if isinstance(error, dict):
        print(
            f"{'last error':>15}: {error.get('code')} at {error.get('at')}: {error.get('detail')}"
        )
    if status.get("next_attempt_at"):
        print(f"{'next attempt':>15}: {status['next_attempt_at']}")
    alarms = status.get("alarms")
    for alarm in alarms if isinstance(alarms, list) else []:
        print(
            f"{'ALARM':>15}: {alarm.get('code')} relay={alarm.get('relay')} "
            f"x{alarm.get('count')} since {alarm.get('since')}: {alarm.get('detail')}"
        )


# -- desktop -----------------------------------------------------------------------------


def cmd_desktop(config: AgentConfig, args: argparse.Namespace) -> int:
    directory = answers.answers_dir(config.data_dir)
    try:
        result = answers.submit(directory, args.session_id, args.action)
    except ValueError as exc:
        print(f"outlink-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError:
        print(f"no agent with desktop sessions has run with data_dir {config.data_dir}")
        return EXIT_NOT_CONNECTED
    except PermissionError:
        print(f"cannot write {directory}: run this as root or the agent's user")
        return EXIT_NOT_CONNECTED
    if result is None:
        print(f"no running agent took the answer: is session {args.session_id} active?")
        return EXIT_NOT_CONNECTED
    if not result.get("ok"):
        print(f"refused ({result.get('error')}): {result.get('message')}")
        return EXIT_NOT_CONNECTED
    print(f"session {args.session_id}: {result.get('state')}")
    return EXIT_OK


# -- entry point -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outlink-agent", description="Outlink agent: enroll, run, status, desktop."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="agent TOML file")
        return sp

    sp = command("run", "keep the tunnel to the relay up and send telemetry (foreground)")
    sp.add_argument("--telemetry", help="telemetry TOML file (default: next to --config)")
    sp = command("enroll", "get this device its certificate with a one-time token")
    sp.add_argument("--token", help="enrolment token (or env OUTLINK_AGENT_ENROLL_TOKEN)")
    sp.add_argument("--url", help="enrolment URL (default: first relay's host, path /enroll)")
    sp.add_argument("--hostname", help="informational name sent with the request")
    sp.add_argument("--force", action="store_true", help="replace an existing identity")
    sp = command("status", "show the running agent's status and alarms")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp = command("desktop", "answer a remote desktop request or end a session, on the device")
    sp.add_argument("action", choices=answers.ACTIONS)
    sp.add_argument("session_id", help="the session id the prompt and the portal show")
    add_audit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_cli_config(args.config)
        if args.command == "run":
            return cmd_run(config, load_cli_telemetry_config(args.telemetry, args.config))
        if args.command == "audit":
            return cmd_audit(config, args)
        if args.command == "enroll":
            return cmd_enroll(config, args)
        if args.command == "desktop":
            return cmd_desktop(config, args)
        return cmd_status(config, args)
    except ConfigError as exc:
        print(f"outlink-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
