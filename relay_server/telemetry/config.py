"""Relay-side telemetry configuration: one TOML file beside ``relay.toml``.

Found at ``--telemetry FILE``, else ``$OUTLINK_TELEMETRY_CONFIG``; no file means
defaults (ingestion, alarms and uploads work; no e-mail, no webhooks). Read by
`tomlconfig`: unknown keys are an error, every key has a variable
``OUTLINK_TELEMETRY_<KEY PATH>`` that overrides the file, which is how secrets stay out
of it: ``OUTLINK_TELEMETRY_SMTP_PASSWORD`` and, for a webhook the file declares,
``OUTLINK_TELEMETRY_WEBHOOKS_<NAME>_SECRET``. A relative ``upload_dir`` is taken from
the file's directory. ``deploy/relay-telemetry.example.toml`` shows every key.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tomlconfig import ConfigError, ConfigFile, Relative

ENV_CONFIG = "OUTLINK_TELEMETRY_CONFIG"
ENV_PREFIX = "OUTLINK_TELEMETRY_"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
#: Webhook secrets shorter than this are guessable.
MIN_SECRET = 16


@dataclass(frozen=True)
class SmtpConfig:
    host: str = ""  # empty: e-mail notifications are recorded as failed ("no SMTP")
    port: int = 25
    sender: str = "outlink@localhost"
    starttls: bool = False
    username: str = ""
    password: str = ""
    timeout: float = 10.0


@dataclass(frozen=True)
class NotifyConfig:
    dedup_window: float = 1800.0
    rate_limit: int = 10
    rate_window: float = 3600.0
    #: Attempts per notification, `retry_delay` apart (doubling).
    attempts: int = 3
    retry_delay: float = 5.0
    webhook_timeout: float = 10.0


@dataclass(frozen=True)
class Webhook:
    """``[webhooks.<name>]``: where alarms are POSTed, signed with `secret` (HMAC-SHA256)."""

    url: str
    secret: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class RetentionConfig:
    raw_days: float = 30.0
    hourly_days: float = 730.0
    event_days: float = 730.0
    closed_alarm_days: float = 730.0
    upload_days: float = 90.0


@dataclass(frozen=True)
class TelemetryServerConfig:
    #: Where uploaded log files are stored (the portal serves them from there).
    upload_dir: Relative[str] = "var/uploads"
    #: Largest log upload accepted (compressed bytes).
    max_upload_bytes: int = 100 * 1024 * 1024
    #: Linked from notifications; empty: no link.
    portal_url: str = ""
    #: Rules are re-read from the database this often (portal edits take effect).
    rules_refresh: float = 5.0
    #: Offline rules are checked this often.
    offline_check: float = 30.0
    #: Hourly aggregates of hours that got data are recomputed this often.
    downsample_interval: float = 300.0
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    webhooks: Mapping[str, Webhook] = field(default_factory=dict)


def load_telemetry_config(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> TelemetryServerConfig:
    """Read `path` (or $OUTLINK_TELEMETRY_CONFIG; none: defaults). Raises ConfigError."""
    env = os.environ if env is None else env
    return TELEMETRY_FILE.load(path or env.get(ENV_CONFIG) or None, env)


def _validate(config: TelemetryServerConfig) -> None:
    notify, smtp, retention = config.notify, config.smtp, config.retention
    checks = [
        (config.max_upload_bytes > 0, "max_upload_bytes must be > 0"),
        (config.rules_refresh > 0, "rules_refresh must be > 0"),
        (config.offline_check > 0, "offline_check must be > 0"),
        (config.downsample_interval > 0, "downsample_interval must be > 0"),
        (notify.rate_limit >= 1 and notify.attempts >= 1, "notify: rate_limit, attempts >= 1"),
        (notify.dedup_window >= 0 and notify.rate_window > 0, "notify: windows must be > 0"),
        (0 < smtp.port < 65536, "smtp.port out of range"),
        (all(v > 0 for v in retention.__dict__.values()), "retention: days must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for name, hook in config.webhooks.items():
        _validate_webhook(f"webhooks.{name}", name, hook)


def _validate_webhook(where: str, name: str, hook: Webhook) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: names are short lowercase words")
    parsed = urllib.parse.urlsplit(hook.url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise ConfigError(f"{where}.url: must be an https:// URL")
    if parsed.scheme == "http" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        # Alarms may carry device details: only loopback receivers get plain HTTP.
        raise ConfigError(f"{where}.url: plain http only for a loopback receiver")
    if len(hook.secret) < MIN_SECRET:
        raise ConfigError(f"{where}.secret: at least {MIN_SECRET} characters")


TELEMETRY_FILE = ConfigFile(TelemetryServerConfig, ENV_PREFIX, check=_validate)
