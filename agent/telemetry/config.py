"""Telemetry configuration of the agent: its own TOML file, safe defaults.

Kept apart from ``agent.toml`` (whose keys the connection manager owns and checks
strictly) because it describes the *equipment*: where its logs are, which error codes
matter, which processes are the equipment software. Found at ``--telemetry FILE``,
else ``$OUTLINK_AGENT_TELEMETRY_CONFIG``, else ``telemetry.toml`` next to the agent's
config file; no file means defaults (system metrics only). Relative paths are
resolved against the file's directory. Unknown keys are an error. Example::

    poll_interval = 60        # R16
    send_interval = 300       # batches every 5 min; urgent codes go at once (R17)
    processes = ["equipment-daemon"]
    disks = ["/", "/data"]
    properties_file = "/opt/equipment/device.json"

    [[sources]]
    name = "app"
    path = "/var/log/equipment/app.log"

    [severity]
    default = "warning"
    codes = { "I*" = "routine", "W*" = "warning", "E9*" = "urgent" }

    [scrub]
    name_keys = ["radiographer"]     # added to the built-in keys
    patterns = ['ACC-\\d{6}']

    [[uploads]]
    name = "app"
    path = "/var/log/equipment/app.log*"
    max_bytes = 20_000_000
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telemetry.records import SOURCE
from telemetry.scrub import DEFAULT_DOB_KEYS, DEFAULT_ID_KEYS, DEFAULT_NAME_KEYS, ScrubRules
from telemetry.severity import SeverityTable

ENV_CONFIG = "OUTLINK_AGENT_TELEMETRY_CONFIG"
DEFAULT_FILE_NAME = "telemetry.toml"

#: A log line: ``2025-11-27 10:00:01.123 ERROR [component] E4012 message``. Named groups:
#: ``ts`` (optional), ``level`` (optional), ``code`` (a line without one is not an event),
#: ``message``.
DEFAULT_PATTERN = (
    r"^(?P<ts>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s+(?P<level>[A-Z]+)\s+"
    r"(?:\[[^\]]*\]\s+)?(?P<code>[A-Z]\d{3,5})\b\s*(?P<message>.*)$"
)
DEFAULT_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

#: Staged uploads are bounded: one upload at most this big (compressed, per source).
DEFAULT_UPLOAD_MAX = 20 * 1024 * 1024
#: Spool bound: 50 MB holds ~weeks of polls of a device that lost its link.
DEFAULT_SPOOL_BYTES = 50 * 1024 * 1024


class TelemetryConfigError(ValueError):
    """The telemetry configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class SourceConfig:
    """A log file read for error codes (``type = "logfile"``) or another plug-in type."""

    name: str
    path: str
    type: str = "logfile"
    pattern: str = DEFAULT_PATTERN
    timestamp_format: str = DEFAULT_TS_FORMAT
    #: Device logs are written in local time unless the equipment says otherwise.
    utc: bool = False
    #: A new source starts at the end of its file (history is not replayed as events).
    from_start: bool = False


@dataclass(frozen=True)
class UploadConfig:
    """A log file (or glob of rotated files) the server may ask for, by `name`."""

    name: str
    path: str
    max_bytes: int = DEFAULT_UPLOAD_MAX


@dataclass(frozen=True)
class TelemetryConfig:
    enabled: bool = True
    #: R16: poll the device every 60 s.
    poll_interval: float = 60.0
    #: R17: send at a schedule; urgent codes are sent the moment they are read.
    send_interval: float = 300.0
    #: How often log sources are checked for new lines (a stat() when nothing changed);
    #: bounds the delay from an urgent code being written to it being sent.
    tail_interval: float = 0.5
    #: Device properties are re-read this often (sent only when they changed).
    properties_interval: float = 3600.0
    #: Upload every configured log file this often; 0 = only on request or rule.
    upload_interval: float = 0.0
    disks: tuple[str, ...] = ("/",)
    #: Names (or command-line fragments) of the equipment software's processes.
    processes: tuple[str, ...] = ()
    temperatures: bool = True
    #: JSON object of device properties written by the equipment software.
    properties_file: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)
    spool_file: str = ""  # default: <data_dir>/telemetry-spool.db
    spool_max_bytes: int = DEFAULT_SPOOL_BYTES
    spool_max_age: float = 30 * 86_400.0
    audit_file: str = ""  # default: <data_dir>/audit.log
    staging_dir: str = ""  # default: <data_dir>/uploads
    sources: tuple[SourceConfig, ...] = ()
    uploads: tuple[UploadConfig, ...] = ()
    severity: SeverityTable = field(default_factory=lambda: SeverityTable({}))
    scrub: ScrubRules = field(default_factory=ScrubRules)

    def resolved(self, data_dir: Path) -> TelemetryConfig:
        """A copy with the data-dir defaults filled in."""
        from dataclasses import replace

        return replace(
            self,
            spool_file=self.spool_file or str(data_dir / "telemetry-spool.db"),
            audit_file=self.audit_file or str(data_dir / "audit.log"),
            staging_dir=self.staging_dir or str(data_dir / "uploads"),
        )


_TOP = {
    "enabled": bool,
    "poll_interval": float,
    "send_interval": float,
    "tail_interval": float,
    "properties_interval": float,
    "upload_interval": float,
    "disks": list,
    "processes": list,
    "temperatures": bool,
    "properties_file": str,
    "properties": dict,
    "spool_file": str,
    "spool_max_bytes": int,
    "spool_max_age": float,
    "audit_file": str,
    "staging_dir": str,
    "sources": list,
    "uploads": list,
    "severity": dict,
    "scrub": dict,
}
_PATHS = ("properties_file", "spool_file", "audit_file", "staging_dir")


def find_config(explicit: str | None, agent_config: str | None) -> Path | None:
    """Which telemetry file to read (None: defaults)."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    if agent_config:
        candidate = Path(agent_config).with_name(DEFAULT_FILE_NAME)
        if candidate.exists():
            return candidate
    return None


def load_telemetry_config(path: Path | None) -> TelemetryConfig:
    """Read and validate `path` (None: defaults). Raises TelemetryConfigError."""
    if path is None:
        return TelemetryConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TelemetryConfigError(f"telemetry config not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TelemetryConfigError(f"{path}: {exc}") from None
    return parse_config(raw, path.resolve().parent)


def parse_config(raw: Mapping[str, Any], base: Path) -> TelemetryConfig:
    unknown = set(raw) - set(_TOP)
    if unknown:
        raise TelemetryConfigError(f"unknown key(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for key, kind in _TOP.items():
        if key not in raw:
            continue
        value = raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TelemetryConfigError(f"{key}: must be {kind.__name__}")
        values[key] = value
    for key in _PATHS:
        if values.get(key):
            values[key] = str((base / values[key]).resolve())
    for key in ("disks", "processes"):
        if key in values:
            values[key] = _strings(values[key], key)
    if "properties" in values:
        values["properties"] = {
            str(k): _string(v, f"properties.{k}") for k, v in values["properties"].items()
        }
    if "sources" in values:
        values["sources"] = tuple(_source(t, base, i) for i, t in enumerate(values["sources"]))
        _unique([s.name for s in values["sources"]], "sources")
    if "uploads" in values:
        values["uploads"] = tuple(_upload(t, base, i) for i, t in enumerate(values["uploads"]))
        _unique([u.name for u in values["uploads"]], "uploads")
    if "severity" in values:
        values["severity"] = _severity(values["severity"])
    if "scrub" in values:
        values["scrub"] = _scrub(values["scrub"])
    config = TelemetryConfig(**values)
    for name in ("poll_interval", "send_interval", "tail_interval", "properties_interval"):
        if not getattr(config, name) > 0:
            raise TelemetryConfigError(f"{name}: must be > 0")
    if config.upload_interval < 0 or config.spool_max_bytes < 64 * 1024:
        raise TelemetryConfigError("upload_interval >= 0 and spool_max_bytes >= 65536 needed")
    if config.spool_max_age <= 0:
        raise TelemetryConfigError("spool_max_age: must be > 0")
    return config


def _source(table: Any, base: Path, index: int) -> SourceConfig:
    where = f"sources[{index}]"
    fields = _table(
        table, where, {"name", "path", "type", "pattern", "timestamp_format", "utc", "from_start"}
    )
    name = _name(fields.get("name"), f"{where}.name")
    path = _string(fields.get("path"), f"{where}.path")
    pattern = _string(fields.get("pattern", DEFAULT_PATTERN), f"{where}.pattern")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise TelemetryConfigError(f"{where}.pattern: {exc}") from None
    if "code" not in compiled.groupindex or "message" not in compiled.groupindex:
        raise TelemetryConfigError(f"{where}.pattern: needs named groups 'code' and 'message'")
    return SourceConfig(
        name=name,
        path=str((base / path).resolve()),
        type=_string(fields.get("type", "logfile"), f"{where}.type"),
        pattern=pattern,
        timestamp_format=_string(fields.get("timestamp_format", DEFAULT_TS_FORMAT), where),
        utc=_bool(fields.get("utc", False), f"{where}.utc"),
        from_start=_bool(fields.get("from_start", False), f"{where}.from_start"),
    )


def _upload(table: Any, base: Path, index: int) -> UploadConfig:
    where = f"uploads[{index}]"
    fields = _table(table, where, {"name", "path", "max_bytes"})
    max_bytes = fields.get("max_bytes", DEFAULT_UPLOAD_MAX)
    if type(max_bytes) is not int or not 0 < max_bytes <= 1024**3:
        raise TelemetryConfigError(f"{where}.max_bytes: must be 1..1073741824")
    path = _string(fields.get("path"), f"{where}.path")
    return UploadConfig(
        _name(fields.get("name"), f"{where}.name"), str((base / path).resolve()), max_bytes
    )


def _severity(table: Mapping[str, Any]) -> SeverityTable:
    fields = _table(table, "severity", {"default", "codes"})
    codes = fields.get("codes", {})
    if not isinstance(codes, dict):
        raise TelemetryConfigError("severity.codes: must be a table of code = level")
    try:
        return SeverityTable(
            {str(k): _string(v, f"severity.codes.{k}") for k, v in codes.items()},
            _string(fields.get("default", "warning"), "severity.default"),
        )
    except ValueError as exc:
        raise TelemetryConfigError(f"severity: {exc}") from None


def _scrub(table: Mapping[str, Any]) -> ScrubRules:
    fields = _table(table, "scrub", {"name_keys", "id_keys", "dob_keys", "patterns"})
    return ScrubRules(
        name_keys=DEFAULT_NAME_KEYS + _strings(fields.get("name_keys", []), "scrub.name_keys"),
        id_keys=DEFAULT_ID_KEYS + _strings(fields.get("id_keys", []), "scrub.id_keys"),
        dob_keys=DEFAULT_DOB_KEYS + _strings(fields.get("dob_keys", []), "scrub.dob_keys"),
        patterns=_strings(fields.get("patterns", []), "scrub.patterns"),
    )


def _table(value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TelemetryConfigError(f"{where}: must be a table")
    unknown = set(value) - allowed
    if unknown:
        raise TelemetryConfigError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise TelemetryConfigError(f"{where}: must be a non-empty string")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise TelemetryConfigError(f"{where}: must be true or false")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not SOURCE.fullmatch(value):
        raise TelemetryConfigError(f"{where}: must be a short lowercase name like app")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TelemetryConfigError(f"{where}: must be a list of strings")
    return tuple(value)


def _unique(names: list[str], where: str) -> None:
    if len(set(names)) != len(names):
        raise TelemetryConfigError(f"{where}: names must be unique")
