"""Agent configuration: one TOML file, safe defaults, `OUTLINK_AGENT_*` env overrides.

The agent refuses anything that would weaken R24/R27: relay URLs must be
``wss://`` (a ``ws://`` URL is an error, not a warning), and the relay is
verified against ``ca_file`` only, never the system trust store.

Unknown keys are an error so that a typo cannot silently fall back to a default.
Environment variables override the file: a top-level key ``ca_file`` is
``OUTLINK_AGENT_CA_FILE``; a key in a table, e.g. ``[backoff] cap``, is
``OUTLINK_AGENT_BACKOFF_CAP``. Lists (``relay_urls``) are comma-separated.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "OUTLINK_AGENT_"

# Where a packaged agent keeps its state; the systemd unit grants write access here only.
DEFAULT_DATA_DIR = "/var/lib/outlink-agent"
DEFAULT_CONFIG_PATH = "/etc/outlink/agent.toml"


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message says which key."""


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
    """Dead-peer detection by the tunnel (client side: PING after 15 s idle, dead 20 s later)."""

    idle: float = 15.0
    timeout: float = 20.0


@dataclass(frozen=True)
class DesktopConfig:
    """Remote desktop sessions (`agent.desktop`). Device-local policy (R31): set by the
    customer's IT at installation; nothing the relay or portal sends can change it."""

    # Unset = on when a display is configured here, named by $DISPLAY, or present as
    # /tmp/.X11-unix/X0; off otherwise (a headless device has no screen to share).
    enabled: bool | None = None
    # Ask the person at the device before any session (on by default; R31).
    consent_required: bool = True
    # No answer within this many seconds = denied.
    consent_timeout_s: float = 30.0
    # Let the customer's site contacts answer from the portal instead of the device.
    allow_remote_consent: bool = False
    # A session ends after this long whatever happens (4 h).
    max_session_s: float = 14400.0
    # ... and after this long without any input or message from the viewer (15 min).
    idle_timeout_s: float = 900.0
    # The X display to share and to show the prompt on; "" = $DISPLAY, else ":0".
    display: str = ""
    # R32: frame-rate cap and CPU budget (fraction of one core) of the screen encoder.
    max_fps: float = 30.0
    cpu_budget: float = 0.5


@dataclass(frozen=True)
class AgentConfig:
    """Everything `outlink-agent run` and `enroll` need. Paths are absolute after `load_config`."""

    relay_urls: tuple[str, ...] = ()
    # The pinned fleet CA: the ONLY trust anchor for the relay's certificate.
    ca_file: str = "/etc/outlink/ca.pem"
    # device.key (0600) + device.pem written by `outlink-agent enroll` and renewed over
    # the tunnel (layout: agent.identity).
    identity_dir: str = f"{DEFAULT_DATA_DIR}/identity"
    data_dir: str = DEFAULT_DATA_DIR
    # "auto" (PAC if configured, else HTTPS_PROXY/NO_PROXY, else direct), "none", or an
    # explicit "http://[user:pass@]host:port".
    proxy: str = "auto"
    pac_url: str = ""
    pac_file: str = ""
    # "user:pass" for proxies named by a PAC file or the environment without userinfo.
    proxy_auth: str = ""
    # Opening handshake (TCP + proxy CONNECT + TLS + HTTP upgrade) must finish in this time.
    open_timeout: float = 15.0
    # R32: the device's own work comes first. The niceness to run at (0..19).
    nice: int = 10
    log_level: str = "INFO"
    # "text" for a terminal, "json" for the journal / log shippers.
    log_format: str = "text"
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
    """Read `path` (None = defaults only), apply env overrides, validate.

    Relative paths in the file are resolved against the file's directory so that a
    config written next to its certificates works from any working directory.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        base_dir = p.resolve().parent
    config: AgentConfig = _build(AgentConfig, raw, env, ENV_PREFIX, "")
    config = dataclasses.replace(
        config,
        ca_file=_absolute(config.ca_file, base_dir),
        identity_dir=_absolute(config.identity_dir, base_dir),
        data_dir=_absolute(config.data_dir, base_dir),
        pac_file=_absolute(config.pac_file, base_dir) if config.pac_file else "",
    )
    _validate(config)
    return config


def _absolute(value: str, base_dir: Path) -> str:
    return str((base_dir / value).resolve()) if value else value


def _validate(config: AgentConfig) -> None:
    for url in config.relay_urls:
        validate_relay_url(url)
    if config.proxy not in ("auto", "none"):
        parsed = urllib.parse.urlsplit(config.proxy)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError("proxy: must be 'auto', 'none' or http://[user:pass@]host:port")
    if config.proxy_auth and ":" not in config.proxy_auth:
        raise ConfigError("proxy_auth: must be 'user:password'")
    if config.log_format not in ("text", "json"):
        raise ConfigError("log_format: must be 'text' or 'json'")
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
# nobody sees holds the device's one session slot for ages.
_CONSENT_TIMEOUT_RANGE = (5.0, 600.0)


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


def _build(
    cls: type[Any], raw: Mapping[str, Any], env: Mapping[str, str], prefix: str, where: str
) -> Any:
    """Instantiate dataclass `cls` from a TOML table plus env overrides, type-checked."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in {where or 'top level'}: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        key = f"{where}{f.name}"
        env_name = f"{prefix}{f.name.upper()}"
        if dataclasses.is_dataclass(hint):
            table = raw.get(f.name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{key}: must be a table")
            values[f.name] = _build(hint, table, env, f"{env_name}_", f"{key}.")  # type: ignore[arg-type]
            continue
        hint, optional = _optional(hint)
        if env_name in env:
            text = env[env_name]
            if optional and text.strip().lower() in ("", "auto"):
                values[f.name] = None
            else:
                values[f.name] = _from_env(hint, text, env_name)
        elif f.name in raw:
            values[f.name] = _check_type(hint, raw[f.name], key)
    return cls(**values)


def _optional(hint: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None`` (None = "decide at run time"; TOML has no null, so
    the file just leaves the key out, and the environment says "auto"), else ``(hint, False)``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _from_env(hint: Any, text: str, name: str) -> Any:
    try:
        if hint is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes")
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if hint == tuple[str, ...]:
            return tuple(part.strip() for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"{name}: cannot parse {text!r} as {getattr(hint, '__name__', hint)}"
        ) from None
    return text


def _check_type(hint: Any, value: Any, key: str) -> Any:
    if hint == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: must be a list of strings")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: must be {hint.__name__}, got {type(value).__name__}")
    return value
