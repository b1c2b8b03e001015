"""``python -m relay_server.telemetry serve|maintain``.

* ``serve --config relay.toml [--telemetry telemetry.toml]``: ``outlink-relay`` with
  telemetry attached (migrate, then serve until SIGTERM/SIGINT). Exit codes as
  ``outlink-relay``: 0 after a graceful stop, 2 bad configuration, 1 database or
  listening socket unusable.
* ``maintain (--config relay.toml | --db URL) [--telemetry FILE]``: recompute pending
  hourly aggregates, then delete what is past retention (raw 30 days, aggregates and
  events 2 years by default; uploads' files too). Prints one JSON line. Run it daily
  (a systemd timer or cron).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from pki.ca import CAError, CertificateAuthority, load_ca
from relay_server import logs
from relay_server.cli import CONFIG_ENV
from relay_server.config import ConfigError, RelayConfig, load_config
from relay_server.eventloop import new_event_loop
from relay_server.server import Relay
from relay_server.telemetry.config import (
    TelemetryConfigError,
    TelemetryServerConfig,
    load_telemetry_config,
)
from relay_server.telemetry.service import TelemetryService
from store.db import make_engine, session_scope, upgrade
from store.telemetry import downsample, prune

log = logging.getLogger("relay_server")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay_server.telemetry")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the relay with telemetry"), ("maintain", "retention")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--config", default=os.environ.get(CONFIG_ENV), help="relay TOML file")
        sp.add_argument("--telemetry", help="telemetry TOML file ($OUTLINK_TELEMETRY_CONFIG)")
        if name == "maintain":
            sp.add_argument("--db", help="database URL (default: the relay config's db_url)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        telemetry = load_telemetry_config(args.telemetry)
    except (ConfigError, TelemetryConfigError) as exc:
        print(f"outlink-relay: {exc}", file=sys.stderr)
        return 2
    if args.command == "maintain":
        return maintain(args.db or config.db_url, telemetry)
    logs.configure(config.log.level, config.log.format)
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
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_serve(config, telemetry, ca))


async def _serve(
    config: RelayConfig, telemetry_config: TelemetryServerConfig, ca: CertificateAuthority | None
) -> int:
    relay = Relay(config, ca=ca)
    telemetry = TelemetryService.for_relay(relay, telemetry_config)
    telemetry.attach(relay)
    await telemetry.start()
    try:
        await relay.start()
    except OSError as exc:
        log.error("! cannot listen: %s", exc)
        await relay.stop()
        await telemetry.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("= signal received, shutting down")
    await relay.stop()
    await telemetry.stop()
    return 0


def maintain(db_url: str, config: TelemetryServerConfig) -> int:
    """Downsample everything pending, then prune by the retention settings."""
    engine = make_engine(db_url)
    retention = config.retention
    try:
        now = datetime.now(UTC)
        hours = 0
        while True:
            with session_scope(engine) as session:
                step = downsample(session, now=now)
            hours += step
            if step == 0:
                break
        with session_scope(engine) as session:
            report = prune(
                session,
                now=now,
                raw=timedelta(days=retention.raw_days),
                hourly=timedelta(days=retention.hourly_days),
                events=timedelta(days=retention.event_days),
                closed_alarms=timedelta(days=retention.closed_alarm_days),
                uploads=timedelta(days=retention.upload_days),
            )
    except SQLAlchemyError as exc:
        print(f"outlink-relay: database error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    upload_dir = Path(config.upload_dir).resolve()
    for name in report.uploads:
        path = (upload_dir / name).resolve()
        if path.is_relative_to(upload_dir):
            path.unlink(missing_ok=True)
    print(
        json.dumps(
            {
                "downsampled_hours": hours,
                "records": report.records,
                "events": report.events,
                "hourly": report.hourly,
                "alarms": report.alarms,
                "notifications": report.notifications,
                "uploads": len(report.uploads),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
