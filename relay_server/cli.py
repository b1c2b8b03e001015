"""`outlink-relay --config FILE` (also `python -m relay_server`): migrate, then serve.

Exit codes: 0 after a graceful stop (SIGTERM/SIGINT), 2 for a bad configuration or
CA directory, 1 when the database or the listening sockets cannot be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

import jsonlog
from pki.ca import CAError, CertificateAuthority, load_ca
from relay_server.allocator import tune_allocator
from relay_server.config import RelayConfig, load_config
from relay_server.desktop.service import DesktopService
from relay_server.eventloop import new_event_loop
from relay_server.server import Relay
from relay_server.telemetry.config import TelemetryServerConfig, load_telemetry_config
from relay_server.telemetry.service import TelemetryService
from release import VERSION
from store.db import upgrade
from tomlconfig import ConfigError

log = logging.getLogger("relay_server")

CONFIG_ENV = "OUTLINK_RELAY_CONFIG"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="outlink-relay", description="Outlink relay: migrate the database, then serve."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"TOML configuration file (default: ${CONFIG_ENV}, else built-in defaults)",
    )
    parser.add_argument(
        "--telemetry",
        help="telemetry TOML file: rules' notification targets, uploads, retention "
        "(default: $OUTLINK_TELEMETRY_CONFIG, else built-in defaults)",
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        telemetry = load_telemetry_config(args.telemetry)
    except ConfigError as exc:
        print(f"outlink-relay: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"outlink-relay: configuration OK (relay_id={config.relay_id})")
        return 0
    jsonlog.configure(config.log.level, config.log.format)
    try:
        ca = load_ca(Path(config.tls.ca_dir)) if config.tls.ca_dir else None
    except CAError as exc:
        log.error('! %s (set tls.ca_dir = "" for a relay that signs nothing)', exc)
        return 2
    try:
        upgrade(config.db_url)
    except SQLAlchemyError as exc:
        log.error("! database migration failed: %s", exc)
        return 1
    tune_allocator()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_serve(config, telemetry, ca))


async def _serve(
    config: RelayConfig, telemetry_config: TelemetryServerConfig, ca: CertificateAuthority | None
) -> int:
    relay = Relay(config, ca=ca)
    relay.add_feature(TelemetryService.for_relay(relay.host, telemetry_config))
    relay.add_feature(DesktopService.for_relay(relay.host))
    try:
        await relay.start()
    except OSError as exc:
        log.error("! cannot listen: %s", exc)
        await relay.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("= signal received, shutting down")
    await relay.stop()
    return 0
