"""Telemetry configuration of the agent: its own TOML file, safe defaults.

Kept apart from ``agent.toml`` (whose keys the connection manager owns and checks
strictly) because it describes the *equipment*: where its logs are, which error codes
matter, which processes are the equipment software. Found at ``--telemetry FILE``,
else ``$OUTLINK_AGENT_TELEMETRY_CONFIG``, else ``telemetry.toml`` next to the agent's
config file; no file means defaults (system metrics only). Read by `tomlconfig`:
unknown keys are an error, relative paths are taken from the file's directory, and
``OUTLINK_AGENT_TELEMETRY_<KEY PATH>`` overrides a key (``poll_interval`` is
``OUTLINK_AGENT_TELEMETRY_POLL_INTERVAL``). ``deploy/agent-telemetry.example.toml``
shows every key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

from telemetry.records import SOURCE
from telemetry.scrub import DEFAULT_DOB_KEYS, DEFAULT_ID_KEYS, DEFAULT_NAME_KEYS, ScrubRules
from telemetry.severity import SeverityTable
from tomlconfig import ConfigError, ConfigFile, Relative, Via

ENV_CONFIG = "OUTLINK_AGENT_TELEMETRY_CONFIG"
ENV_PREFIX = "OUTLINK_AGENT_TELEMETRY_"
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


@dataclass(frozen=True)
class SourceConfig:
    """A log file read for error codes (``type = "logfile"``) or another plug-in type."""

    name: str
    path: Relative[str]
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
    path: Relative[str]
    max_bytes: int = DEFAULT_UPLOAD_MAX


@dataclass(frozen=True)
class SeverityFile:
    """``[severity]``: error code (or glob) -> level, and the level of other codes."""

    default: str = SeverityTable({}).default.label
    codes: Mapping[str, str] = field(default_factory=dict)

    def table(self) -> SeverityTable:
        return SeverityTable(self.codes, self.default)


@dataclass(frozen=True)
class ScrubFile:
    """``[scrub]``: keys and patterns added to the built-in scrub rules (never replacing them)."""

    name_keys: tuple[str, ...] = ()
    id_keys: tuple[str, ...] = ()
    dob_keys: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()

    def rules(self) -> ScrubRules:
        return ScrubRules(
            name_keys=DEFAULT_NAME_KEYS + self.name_keys,
            id_keys=DEFAULT_ID_KEYS + self.id_keys,
            dob_keys=DEFAULT_DOB_KEYS + self.dob_keys,
            patterns=self.patterns,
        )


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
    properties_file: Relative[str] = ""
    properties: Mapping[str, str] = field(default_factory=dict)
    spool_file: Relative[str] = ""  # default: <data_dir>/telemetry-spool.db
    spool_max_bytes: int = DEFAULT_SPOOL_BYTES
    spool_max_age: float = 30 * 86_400.0
    audit_file: Relative[str] = ""  # default: <data_dir>/audit.log
    staging_dir: Relative[str] = ""  # default: <data_dir>/uploads
    sources: tuple[SourceConfig, ...] = ()
    uploads: tuple[UploadConfig, ...] = ()
    severity: Annotated[SeverityTable, Via(SeverityFile, SeverityFile.table)] = field(
        default_factory=lambda: SeverityFile().table()
    )
    scrub: Annotated[ScrubRules, Via(ScrubFile, ScrubFile.rules)] = field(
        default_factory=lambda: ScrubFile().rules()
    )

    def resolved(self, data_dir: Path) -> TelemetryConfig:
        """A copy with the data-dir defaults filled in."""
        return replace(
            self,
            spool_file=self.spool_file or str(data_dir / "telemetry-spool.db"),
            audit_file=self.audit_file or str(data_dir / "audit.log"),
            staging_dir=self.staging_dir or str(data_dir / "uploads"),
        )


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


def load_telemetry_config(
    path: Path | None, environ: Mapping[str, str] | None = None
) -> TelemetryConfig:
    """Read and validate `path` (None: defaults). Raises ConfigError."""
    return TELEMETRY_FILE.load(path, environ)


def load_cli_telemetry_config(telemetry: str | None, config: str | None) -> TelemetryConfig:
    """The telemetry configuration for a command's ``--telemetry`` and ``--config``."""
    return load_telemetry_config(find_config(telemetry, config))


def _validate(config: TelemetryConfig) -> None:
    for name in ("poll_interval", "send_interval", "tail_interval", "properties_interval"):
        if not getattr(config, name) > 0:
            raise ConfigError(f"{name}: must be > 0")
    if config.upload_interval < 0 or config.spool_max_bytes < 64 * 1024:
        raise ConfigError("upload_interval >= 0 and spool_max_bytes >= 65536 needed")
    if config.spool_max_age <= 0:
        raise ConfigError("spool_max_age: must be > 0")
    for key in ("disks", "processes"):
        _strings(getattr(config, key), key)
    for name, value in config.properties.items():
        _string(value, f"properties.{name}")
    for i, source in enumerate(config.sources):
        _validate_source(source, f"sources[{i}]")
    for i, upload in enumerate(config.uploads):
        where = f"uploads[{i}]"
        _name(upload.name, f"{where}.name")
        _string(upload.path, f"{where}.path")
        if not 0 < upload.max_bytes <= 1024**3:
            raise ConfigError(f"{where}.max_bytes: must be 1..1073741824")
    _unique([s.name for s in config.sources], "sources")
    _unique([u.name for u in config.uploads], "uploads")
    scrub = config.scrub
    for key in ("name_keys", "id_keys", "dob_keys", "patterns"):
        _strings(getattr(scrub, key), f"scrub.{key}")


def _validate_source(source: SourceConfig, where: str) -> None:
    _name(source.name, f"{where}.name")
    for key in ("path", "type", "pattern", "timestamp_format"):
        _string(getattr(source, key), f"{where}.{key}")
    try:
        compiled = re.compile(source.pattern)
    except re.error as exc:
        raise ConfigError(f"{where}.pattern: {exc}") from None
    if "code" not in compiled.groupindex or "message" not in compiled.groupindex:
        raise ConfigError(f"{where}.pattern: needs named groups 'code' and 'message'")


def _string(value: str, where: str) -> None:
    if not value:
        raise ConfigError(f"{where}: must be a non-empty string")


def _strings(values: tuple[str, ...], where: str) -> None:
    if not all(values):
        raise ConfigError(f"{where}: must be a list of non-empty strings")


def _name(value: str, where: str) -> None:
    if not SOURCE.fullmatch(value):
        raise ConfigError(f"{where}: must be a short lowercase name like app")


def _unique(names: list[str], where: str) -> None:
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: names must be unique")


TELEMETRY_FILE = ConfigFile(TelemetryConfig, ENV_PREFIX, check=_validate)
