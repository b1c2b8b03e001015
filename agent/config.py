"""Agent configuration: ``agent.toml`` read by `tomlconfig`, safe defaults.

The agent refuses anything that would weaken R24/R27: relay URLs must be
``wss://`` (a ``ws://`` URL is an error, not a warning), and the relay is
verified against ``ca_file`` only, never the system trust store.

Types, unknown keys (refused, so that a typo cannot silently fall back to a default)
and environment overrides follow `tomlconfig`: a top-level key ``ca_file`` is
``OUTLINK_AGENT_CA_FILE``; a key in a table, e.g. ``[backoff] cap``, is
``OUTLINK_AGENT_BACKOFF_CAP``. Lists (``relay_urls``) are comma-separated. Relative
paths are taken from the file's directory.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.desktop.policy import DesktopPolicy
from desktop.pacing import PacerSettings
from protocol.desktop import CONSENT_TIMEOUT_MAX
from tomlconfig import ConfigError, ConfigFile, Relative
from tunnel import Settings

ENV_PREFIX = "OUTLINK_AGENT_"

# Where a packaged agent keeps its state; the systemd unit grants write access here only.
DEFAULT_DATA_DIR = "/var/lib/outlink-agent"
DEFAULT_CONFIG_PATH = "/etc/outlink/agent.toml"


# Defaults that belong to the code which uses them are read from there, never copied.
_TUNNEL_DEFAULTS = Settings()
_POLICY_DEFAULTS = DesktopPolicy()
_PACER_DEFAULTS = PacerSettings()


@dataclass(frozen=True)
class BackoffConfig:
    """Reconnect pacing (see agent.backoff for how the numbers are used)."""

    # First retry window after a failed dial; doubles per failure up to `cap`.
    base: float = 1.0
    # No retry is ever scheduled further out than this (plus GOAWAY's retry_after).
    cap: float = 60.0
    # The failure count resets only after a link stayed up this long, so a relay that
    # accepts and drops at once cannot pull the agent into a tight loop.
    stable_after: float = 20.0
    # A link that was stable and is lost (relay crash, network cut) is redialled within
    # U(0, herd_window): when a relay holding thousands of agents dies, they must not
    # come back in the same second (<= 10 % per second for a fleet of 1,000 needs >= 15 s).
    herd_window: float = 20.0
    # After GOAWAY the relay said when to come back; we add U(0, goaway_jitter) to it.
    goaway_jitter: float = 1.0


@dataclass(frozen=True)
class KeepaliveConfig:
    """Dead-peer detection by the tunnel, client side: PING after `idle` seconds without
    receiving anything, dead `timeout` seconds later. The defaults are the tunnel's
    (decision 0005); the relay's idle time is longer, so idle agents ping and it answers."""

    idle: float = _TUNNEL_DEFAULTS.client_ping_idle
    timeout: float = _TUNNEL_DEFAULTS.client_ping_timeout


@dataclass(frozen=True)
class DesktopConfig:
    """Remote desktop sessions (`agent.desktop`). Device-local policy (R31): set by the
    customer's IT at installation; nothing the relay or portal sends can change it."""

    # Unset = on when a display is configured here, named by $DISPLAY, or present as
    # /tmp/.X11-unix/X0; off otherwise (a headless device has no screen to share).
    enabled: bool | None = None
    # Ask the person at the device before any session (on by default; R31).
    consent_required: bool = _POLICY_DEFAULTS.consent_required
    # No answer within this many seconds = denied.
    consent_timeout_s: float = _POLICY_DEFAULTS.consent_timeout_s
    # Let the customer's site contacts answer from the portal instead of the device.
    allow_remote_consent: bool = _POLICY_DEFAULTS.allow_remote_consent
    # A session ends after this long whatever happens (4 h).
    max_session_s: float = _POLICY_DEFAULTS.max_session_s
    # ... and after this long without any input or message from the viewer (15 min).
    idle_timeout_s: float = _POLICY_DEFAULTS.idle_timeout_s
    # The X display to share and to show the prompt on; "" = $DISPLAY, else ":0".
    display: str = ""
    # R32: frame-rate cap and CPU budget (fraction of one core) of the screen encoder.
    max_fps: float = _PACER_DEFAULTS.max_fps
    cpu_budget: float = _PACER_DEFAULTS.cpu_budget


@dataclass(frozen=True)
class AgentConfig:
    """Everything `outlink-agent run` and `enroll` need. Paths are absolute after `load_config`."""

    relay_urls: tuple[str, ...] = ()
    # The pinned fleet CA: the ONLY trust anchor for the relay's certificate.
    ca_file: Relative[str] = "/etc/outlink/ca.pem"
    # device.key (0600) + device.pem written by `outlink-agent enroll` and renewed over
    # the tunnel (layout: agent.identity).
    identity_dir: Relative[str] = f"{DEFAULT_DATA_DIR}/identity"
    data_dir: Relative[str] = DEFAULT_DATA_DIR
    # "auto" (PAC if configured, else HTTPS_PROXY/NO_PROXY, else direct), "none", or an
    # explicit "http://[user:pass@]host:port".
    proxy: str = "auto"
    pac_url: str = ""
    pac_file: Relative[str] = ""
    # "user:pass" for proxies named by a PAC file or the environment without userinfo.
    proxy_auth: str = ""
    # Opening handshake (TCP + proxy CONNECT + TLS + HTTP upgrade) must finish in this time.
    open_timeout: float = 15.0
    # R32: the device's own work comes first. The niceness to run at (0..19).
    nice: int = 10
    log_level: str = "INFO"
    # "text" for a terminal, "json" for the journal / log shippers.
    log_format: Literal["text", "json"] = "text"
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    desktop: DesktopConfig = field(default_factory=DesktopConfig)

    @property
    def alarms_path(self) -> Path:
        return Path(self.data_dir) / "alarms.json"

    @property
    def status_path(self) -> Path:
        return Path(self.data_dir) / "status.json"


def load_config(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Read `path` (None = defaults only), apply env overrides, validate. Raises ConfigError."""
    return AGENT_FILE.load(path, environ)


def load_cli_config(path: str | None) -> AgentConfig:
    """The configuration a command's ``--config`` names (every ``outlink-agent`` command).

    The default path with no file installed there means built-in defaults plus the
    environment (a device configured by ``OUTLINK_AGENT_*`` variables only).
    """
    if path == DEFAULT_CONFIG_PATH and not Path(path).exists():
        path = None
    return load_config(path)


def _validate(config: AgentConfig) -> None:
    for url in config.relay_urls:
        validate_relay_url(url)
    if config.proxy not in ("auto", "none"):
        parsed = urllib.parse.urlsplit(config.proxy)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError("proxy: must be 'auto', 'none' or http://[user:pass@]host:port")
    if config.proxy_auth and ":" not in config.proxy_auth:
        raise ConfigError("proxy_auth: must be 'user:password'")
    b = config.backoff
    if not (0 < b.base <= b.cap):
        raise ConfigError("backoff: need 0 < base <= cap")
    if b.stable_after < 0 or b.herd_window < 0 or b.goaway_jitter < 0:
        raise ConfigError("backoff: stable_after, herd_window and goaway_jitter must be >= 0")
    if config.keepalive.idle <= 0 or config.keepalive.timeout <= 0:
        raise ConfigError("keepalive: idle and timeout must be > 0")
    if not 0 <= config.nice <= 19:
        raise ConfigError("nice: must be 0..19")
    if config.open_timeout <= 0:
        raise ConfigError("open_timeout: must be > 0")
    _validate_desktop(config.desktop)


# An X display name: [host]:display[.screen] (e.g. ":0", "unix:1", "localhost:10.0").
_X_DISPLAY = re.compile(r"[A-Za-z0-9._/-]*:[0-9]+(\.[0-9]+)?")
# The prompt must stay up long enough to be read, and not so long that a request
# nobody sees holds the device's one session slot for ages (the contract's ceiling, which
# the relay also enforces on the policy the agent reports).
_CONSENT_TIMEOUT_RANGE = (5.0, float(CONSENT_TIMEOUT_MAX))


def _validate_desktop(d: DesktopConfig) -> None:
    low, high = _CONSENT_TIMEOUT_RANGE
    if not low <= d.consent_timeout_s <= high:
        raise ConfigError(f"desktop.consent_timeout_s: must be {low:g}..{high:g} seconds")
    if d.max_session_s <= 0 or d.idle_timeout_s <= 0:
        raise ConfigError("desktop: max_session_s and idle_timeout_s must be > 0")
    if d.display and not _X_DISPLAY.fullmatch(d.display):
        raise ConfigError(f"desktop.display: {d.display!r} is not an X display name like ':0'")
    if not 1 <= d.max_fps <= 60:
        raise ConfigError("desktop.max_fps: must be 1..60")
    if not 0 < d.cpu_budget <= 1:
        raise ConfigError("desktop.cpu_budget: must be in (0, 1] (a fraction of one core)")


def validate_relay_url(url: str) -> None:
    """Raise ConfigError unless `url` is a usable ``wss://host[:port]/path`` URL."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "wss":
        # ws:// would send our identity and the device's data in clear text (R11, R21).
        raise ConfigError(f"relay_urls: {url!r} must use wss:// (ws:// is refused)")
    if not parsed.hostname:
        raise ConfigError(f"relay_urls: {url!r} has no host")
    if parsed.username or parsed.password:
        raise ConfigError(f"relay_urls: {url!r} must not carry credentials")
    try:
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"relay_urls: {url!r} has an invalid port") from None


AGENT_FILE = ConfigFile(AgentConfig, ENV_PREFIX, check=_validate)
