"""Relay configuration: one TOML file, safe defaults, `OUTLINK_RELAY_*` env overrides.

Every setting has a default that is safe on a developer machine (everything on
127.0.0.1). Unknown keys are an error so that a typo cannot silently fall back to
a default. Environment variables override the file: a top-level key ``db_url`` is
``OUTLINK_RELAY_DB_URL`` (``relay_id`` is ``OUTLINK_RELAY_ID``); a key in a table,
e.g. ``[listen] port``, is ``OUTLINK_RELAY_LISTEN_PORT``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunnel import Settings

ENV_PREFIX = "OUTLINK_RELAY_"


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message says which key."""


@dataclass(frozen=True)
class ListenConfig:
    """The single TLS port that serves /agent, /service and /enroll."""

    host: str = "127.0.0.1"
    port: int = 8443
    # TLS + WebSocket opening handshake must finish within this many seconds; a
    # client that trickles bytes cannot hold a slot longer.
    handshake_timeout: float = 10.0


@dataclass(frozen=True)
class OpsConfig:
    """Plain-HTTP listener for /healthz, /readyz, /metrics. Keep it on loopback."""

    host: str = "127.0.0.1"
    port: int = 9100


@dataclass(frozen=True)
class TLSConfig:
    """Files made by `outlink-pki`: the relay's server certificate and the fleet CA."""

    cert: str = "var/pki/relay.pem"
    key: str = "var/pki/relay.key"
    ca: str = "var/pki/ca.pem"
    # Directory of the fleet CA's certificate and key (`outlink-pki init --dir`), used to
    # sign renewals and enrolments. Empty: this relay signs nothing (renew answers
    # "unavailable", /enroll answers 503), so its host need not hold the CA key.
    ca_dir: str = "var/pki"


@dataclass(frozen=True)
class LimitsConfig:
    """Per-source and per-connection limits. ``0`` disables a per-source limit."""

    # A hospital puts hundreds of devices behind one NAT address; a few thousand
    # concurrent connections from one address is still plausible, more is abuse.
    max_connections_per_source: int = 2000
    # Token bucket for NEW connections per source address: sustained rate and burst.
    # After a relay restart, agents behind one NAT come back spread by jitter.
    connect_rate_per_source: float = 50.0
    connect_burst_per_source: int = 200
    # Whole-relay cap: beyond this the process would exceed its memory budget.
    max_connections: int = 20000
    # Tunnel settings for each connection (see tunnel.Settings).
    max_channels: int = 64
    max_pending_opens: int = 16
    # Per-source-address bookkeeping is bounded: beyond this many tracked sources the
    # oldest idle buckets are dropped (they would be full again anyway).
    max_tracked_sources: int = 100_000


_TUNNEL_DEFAULTS = Settings()


@dataclass(frozen=True)
class KeepaliveConfig:
    """Dead-peer detection (done by the tunnel, not by WebSocket pings).

    Defaults are the tunnel's server-side values (docs/tunnel-protocol.md): the relay's
    idle time is longer than the agents', so idle agents ping and the relay only
    answers; a shorter value here would double the keepalive traffic of every agent.
    """

    idle: float = _TUNNEL_DEFAULTS.server_ping_idle
    timeout: float = _TUNNEL_DEFAULTS.server_ping_timeout


@dataclass(frozen=True)
class PresenceConfig:
    """How presence reaches the shared database without a write per frame."""

    # Connect/disconnect changes are flushed in one batch this often.
    flush_interval: float = 1.0
    # last_seen of every connected device is refreshed this often (one UPDATE for all).
    last_seen_interval: float = 60.0
    # The relays row is heartbeated this often; the portal treats a relay whose
    # heartbeat is older than ~3 intervals as gone.
    heartbeat_interval: float = 15.0


@dataclass(frozen=True)
class RevocationConfig:
    """Revoked serials/devices are cached in memory and reloaded this often (<= 60 s)."""

    refresh_interval: float = 10.0


@dataclass(frozen=True)
class ShutdownConfig:
    """Graceful shutdown: tell agents to come back after a small random delay."""

    retry_after_min_ms: int = 250
    retry_after_max_ms: int = 2000
    # How long to wait for tunnels to close after GOAWAY before the server closes them.
    grace: float = 3.0


@dataclass(frozen=True)
class ViewerConfig:
    """The browser viewer's endpoint, ``/view`` (remote desktop sessions)."""

    # Origins of the portal pages that may open a viewer, e.g. "https://portal.example"
    # (scheme, host and port; no path). A browser sends its page's origin with every
    # WebSocket handshake; any other origin gets 403. Empty: /view refuses every browser.
    # Env: OUTLINK_RELAY_VIEWER_ALLOWED_ORIGINS, comma-separated.
    allowed_origins: tuple[str, ...] = ()
    # /view has its own TLS port (on listen.host) that does not ask for a client
    # certificate: browsers cancel a WebSocket handshake that asks for one (Chromium),
    # or prompt staff who have certificates installed. Opened only when
    # allowed_origins is set; 0 = any free port.
    port: int = 8445
    # Browsers connect to this port: its certificate must be one they trust (a public
    # CA's in production; on one machine, the portal's). "" = the [tls] cert and key.
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    # "json" (one object per line, for production) or "text" (for a terminal).
    format: str = "json"


@dataclass(frozen=True)
class RelayConfig:
    """The whole relay configuration. Build with `load_config`."""

    # Unique name of this relay in the shared `relays` table; presence rows point at it.
    relay_id: str = field(default_factory=socket.gethostname)
    # URL the portal uses to reach this relay's /service endpoint. Empty means
    # "wss://<listen.host>:<listen.port>/service" (fine on one machine).
    service_url: str = ""
    db_url: str = "sqlite:///var/outlink.db"
    listen: ListenConfig = field(default_factory=ListenConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    revocation: RevocationConfig = field(default_factory=RevocationConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def public_service_url(self) -> str:
        return self.service_url or f"wss://{self.listen.host}:{self.listen.port}/service"


def load_config(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> RelayConfig:
    """Read `path` (if given), apply env overrides, validate. Raises ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    _apply_env(data, os.environ if env is None else env)
    config: RelayConfig = _build(RelayConfig, data, "")
    _validate(config)
    return config


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    """Copy OUTLINK_RELAY_[SECTION_]KEY values into `data` (as strings; _build converts)."""
    hints = typing.get_type_hints(RelayConfig)
    for f in dataclasses.fields(RelayConfig):
        section_type = hints[f.name]
        if not dataclasses.is_dataclass(section_type):
            # relay_id -> OUTLINK_RELAY_ID, db_url -> OUTLINK_RELAY_DB_URL
            name = ENV_PREFIX + f.name.upper().removeprefix("RELAY_")
            if name in env:
                data[f.name] = env[name]
            continue
        for sub in dataclasses.fields(section_type):
            name = f"{ENV_PREFIX}{f.name.upper()}_{sub.name.upper()}"
            if name in env:
                section = data.setdefault(f.name, {})
                if not isinstance(section, dict):
                    raise ConfigError(f"[{f.name}] must be a table")
                section[sub.name] = env[name]


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"[{where}] " if where else ""
        raise ConfigError(f"{prefix}unknown key(s): {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        t = hints[name]
        key = f"{where}.{name}" if where else name
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            kwargs[name] = _build(t, value, key)
        else:
            kwargs[name] = _convert(t, value, key)
    return cls(**kwargs)


def _convert(t: Any, value: Any, key: str) -> Any:
    """Coerce a TOML value or an env string to the field's scalar type (or a tuple of
    strings: a TOML list, or a comma-separated env string)."""
    try:
        if typing.get_origin(t) is tuple:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError(value)
            return tuple(i.strip() for i in items if i.strip())
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if t is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if t is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if t is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except ValueError:
        raise ConfigError(f"{key}: expected {t.__name__}, got {value!r}") from None
    raise ConfigError(f"{key}: unsupported type {t!r}")


# scheme://host[:port] as browsers send it in Origin (lowercase host, no path, https only).
_ORIGIN = re.compile(r"https://[a-z0-9.\-]+(:[0-9]{1,5})?|https://\[[0-9a-f:.]+\](:[0-9]{1,5})?")


def _validate(c: RelayConfig) -> None:
    checks: list[tuple[bool, str]] = [
        (bool(c.relay_id), "relay_id must not be empty"),
        (0 <= c.listen.port <= 65535, "listen.port out of range"),
        (0 <= c.ops.port <= 65535, "ops.port out of range"),
        (0 <= c.viewer.port <= 65535, "viewer.port out of range"),
        (bool(c.viewer.cert) == bool(c.viewer.key), "viewer.cert and viewer.key go together"),
        (c.listen.handshake_timeout > 0, "listen.handshake_timeout must be > 0"),
        (c.limits.max_connections_per_source >= 0, "limits.max_connections_per_source < 0"),
        (c.limits.connect_rate_per_source >= 0, "limits.connect_rate_per_source < 0"),
        (c.limits.connect_burst_per_source >= 0, "limits.connect_burst_per_source < 0"),
        (c.limits.max_connections > 0, "limits.max_connections must be > 0"),
        (c.limits.max_channels > 0, "limits.max_channels must be > 0"),
        (c.limits.max_pending_opens > 0, "limits.max_pending_opens must be > 0"),
        (c.limits.max_tracked_sources > 0, "limits.max_tracked_sources must be > 0"),
        (c.keepalive.idle > 0 and c.keepalive.timeout > 0, "keepalive values must be > 0"),
        (c.presence.flush_interval > 0, "presence.flush_interval must be > 0"),
        (c.presence.last_seen_interval > 0, "presence.last_seen_interval must be > 0"),
        (c.presence.heartbeat_interval > 0, "presence.heartbeat_interval must be > 0"),
        (
            0 < c.revocation.refresh_interval <= 60,
            "revocation.refresh_interval must be in (0, 60] (revoked tunnels close within 60 s)",
        ),
        (
            0 <= c.shutdown.retry_after_min_ms <= c.shutdown.retry_after_max_ms,
            "shutdown.retry_after_min_ms must be <= retry_after_max_ms",
        ),
        (c.shutdown.grace >= 0, "shutdown.grace must be >= 0"),
        (
            all(_ORIGIN.fullmatch(o) for o in c.viewer.allowed_origins),
            'viewer.allowed_origins: each must be an origin like "https://portal.example:8444"',
        ),
        (c.log.format in ("json", "text"), "log.format must be 'json' or 'text'"),
        (
            c.log.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            "log.level must be a logging level name",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
