"""Relay configuration: ``relay.toml`` read by `tomlconfig`, safe defaults.

Every setting has a default that is safe on a developer machine (everything on
127.0.0.1). Types, unknown keys (refused, so that a typo cannot silently fall back to a
default) and environment overrides follow `tomlconfig`: a top-level key ``db_url`` is
``OUTLINK_RELAY_DB_URL`` (``relay_id`` is ``OUTLINK_RELAY_RELAY_ID``); a key in a
table, e.g. ``[listen] port``, is ``OUTLINK_RELAY_LISTEN_PORT``. Paths are taken as
written (relative ones from the working directory).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tomlconfig import ConfigError, ConfigFile
from tunnel import Settings

ENV_PREFIX = "OUTLINK_RELAY_"

# Tunnel numbers are the tunnel's (docs/tunnel-protocol.md), never copied here.
_TUNNEL_DEFAULTS = Settings()


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
    max_channels: int = _TUNNEL_DEFAULTS.max_channels
    max_pending_opens: int = _TUNNEL_DEFAULTS.max_pending_opens
    # Per-source-address bookkeeping is bounded: beyond this many tracked sources the
    # oldest idle buckets are dropped (they would be full again anyway).
    max_tracked_sources: int = 100_000


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
    format: Literal["json", "text"] = "json"


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
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> RelayConfig:
    """Read `path` (if given), apply env overrides, validate. Raises ConfigError."""
    return RELAY_FILE.load(path, env)


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
        (
            c.log.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            "log.level must be a logging level name",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


RELAY_FILE = ConfigFile(RelayConfig, ENV_PREFIX, check=_validate)
