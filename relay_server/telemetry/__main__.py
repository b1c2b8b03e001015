"""``python -m relay_server.telemetry maintain``: telemetry retention (run it daily).

``maintain (--config relay.toml | --db URL) [--telemetry FILE]``: recompute pending
hourly aggregates, then delete what is past retention (raw 30 days, aggregates and
events 2 years by default; uploads' files too). Prints one JSON line. Run it from a
systemd timer or cron. (The relay itself, with telemetry, is ``outlink-relay``.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from relay_server.cli import CONFIG_ENV
from relay_server.config import load_config
from relay_server.telemetry.config import TelemetryServerConfig, load_telemetry_config
from release import VERSION
from store.db import make_engine, session_scope
from store.telemetry.retention import prune
from store.telemetry.series import DOWNSAMPLE_BATCH, downsample
from tomlconfig import ConfigError

log = logging.getLogger("relay_server")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relay_server.telemetry", description="The relay's telemetry upkeep."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("maintain", help="downsample, then apply retention")
    sp.add_argument("--config", default=os.environ.get(CONFIG_ENV), help="relay TOML file")
    sp.add_argument("--telemetry", help="telemetry TOML file ($OUTLINK_TELEMETRY_CONFIG)")
    sp.add_argument("--db", help="database URL (default: the relay config's db_url)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        telemetry = load_telemetry_config(args.telemetry)
    except ConfigError as exc:
        print(f"outlink-relay: {exc}", file=sys.stderr)
        return 2
    return maintain(args.db or config.db_url, telemetry)


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
            if step < DOWNSAMPLE_BATCH:
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
