"""Relay-side telemetry configuration: one TOML file beside ``relay.toml``.

Found at ``--telemetry FILE``, else ``$OUTLINK_TELEMETRY_CONFIG``; no file means
defaults (ingestion, alarms and uploads work; no e-mail, no webhooks). Secrets may come
from the environment instead of the file: ``OUTLINK_TELEMETRY_SMTP_PASSWORD`` and
``OUTLINK_TELEMETRY_WEBHOOK_<NAME>_SECRET``. Unknown keys are an error. Example::

    upload_dir = "/var/lib/outlink/uploads"     # shared with the portal (it serves them)
    portal_url = "https://portal.example/"

    [smtp]
    host = "smtp.example"
    port = 587
    starttls = true
    sender = "outlink@vendor.example"
    username = "outlink"

    [notify]
    dedup_window = 1800        # the same alarm to the same target: once per 30 min
    rate_limit = 10            # at most 10 per target ...
    rate_window = 3600         # ... per hour

    [webhooks.ops]
    url = "https://hooks.vendor.example/outlink"
    secret = "..."             # HMAC-SHA256 key (or the environment variable)
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_CONFIG = "OUTLINK_TELEMETRY_CONFIG"
ENV_PREFIX = "OUTLINK_TELEMETRY_"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
#: Webhook secrets shorter than this are guessable.
MIN_SECRET = 16


class TelemetryConfigError(ValueError):
    """The relay's telemetry configuration is invalid; the message names the key."""


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
    name: str
    url: str
    secret: bytes = field(repr=False)


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
    upload_dir: str = "var/uploads"
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
    """Read `path` (or $OUTLINK_TELEMETRY_CONFIG; none: defaults). Raises the error above."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_CONFIG) or None
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise TelemetryConfigError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise TelemetryConfigError(f"{path}: {exc}") from None
        base = Path(path).resolve().parent
    return parse_config(raw, base, env)


def parse_config(
    raw: Mapping[str, Any], base: Path, env: Mapping[str, str]
) -> TelemetryServerConfig:
    top = _table(raw, "", {f for f in TelemetryServerConfig.__dataclass_fields__})
    smtp = SmtpConfig(**_section(top.get("smtp", {}), "smtp", SmtpConfig))
    if not smtp.password and env.get(f"{ENV_PREFIX}SMTP_PASSWORD"):
        smtp = SmtpConfig(**{**smtp.__dict__, "password": env[f"{ENV_PREFIX}SMTP_PASSWORD"]})
    notify = NotifyConfig(**_section(top.get("notify", {}), "notify", NotifyConfig))
    retention = RetentionConfig(**_section(top.get("retention", {}), "retention", RetentionConfig))
    webhooks = _webhooks(top.get("webhooks", {}), env)
    scalars = {k: v for k, v in top.items() if k not in ("smtp", "notify", "retention", "webhooks")}
    values = _section(scalars, "", TelemetryServerConfig)
    if "upload_dir" in values:
        values["upload_dir"] = str((base / values["upload_dir"]).resolve())
    config = TelemetryServerConfig(
        **values, smtp=smtp, notify=notify, retention=retention, webhooks=webhooks
    )
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
            raise TelemetryConfigError(message)
    return config


def _webhooks(table: Any, env: Mapping[str, str]) -> dict[str, Webhook]:
    if not isinstance(table, dict):
        raise TelemetryConfigError("[webhooks] must be a table of [webhooks.<name>]")
    hooks = {}
    for name, spec in table.items():
        where = f"webhooks.{name}"
        if not _NAME.fullmatch(name):
            raise TelemetryConfigError(f"{where}: names are short lowercase words")
        fields = _table(spec, where, {"url", "secret"})
        url = fields.get("url")
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("https", "http") or not parsed.hostname:
            raise TelemetryConfigError(f"{where}.url: must be an https:// URL")
        if parsed.scheme == "http" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            # Alarms may carry device details: only loopback receivers get plain HTTP.
            raise TelemetryConfigError(f"{where}.url: plain http only for a loopback receiver")
        secret = env.get(
            f"{ENV_PREFIX}WEBHOOK_{name.upper().replace('-', '_')}_SECRET"
        ) or fields.get("secret", "")
        if not isinstance(secret, str) or len(secret) < MIN_SECRET:
            raise TelemetryConfigError(f"{where}.secret: at least {MIN_SECRET} characters")
        hooks[name] = Webhook(name, str(url), secret.encode())
    return hooks


def _table(value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TelemetryConfigError(f"[{where}] must be a table")
    unknown = set(value) - allowed
    if unknown:
        prefix = f"[{where}] " if where else ""
        raise TelemetryConfigError(f"{prefix}unknown key(s): {', '.join(sorted(unknown))}")
    return value


def _section(value: Any, where: str, cls: type) -> dict[str, Any]:
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    table = _table(value, where, set(fields))
    out: dict[str, Any] = {}
    for key, item in table.items():
        kind = fields[key].type
        name = f"{where}.{key}" if where else key
        if kind == "float" and isinstance(item, int) and not isinstance(item, bool):
            item = float(item)
        expected = {"str": str, "int": int, "float": float, "bool": bool}.get(kind)
        if expected is None:
            raise TelemetryConfigError(f"{name}: not a scalar setting")
        if not isinstance(item, expected) or (expected is not bool and isinstance(item, bool)):
            raise TelemetryConfigError(f"{name}: must be {kind}")
        out[key] = item
    return out
