"""Device sources: where the equipment's own data comes from (a small plug-in interface).

A source is configured as ``[[sources]]`` with a ``type``; `SOURCE_TYPES` maps a type
to a factory ``(SourceConfig, SourceContext) -> DeviceSource``, and
`register_source_type` adds more (an equipment vendor's event database, a serial
line...). A source may provide three things, each optional:

* ``poll_events(position)`` -- new error codes/events since `position` (an opaque
  string the spool stores atomically with the events), called every tail interval;
  messages may be raw: the poller scrubs every source's events (R28);
* ``readings()``            -- numeric ``device.*`` metrics, called at every poll;
* ``properties()``          -- device properties (model, serial, versions).

All three are blocking and run in a worker thread, bounded in work per call.

Built in: ``logfile`` (error codes read from a log file with a configurable pattern,
severity from the table), and `PropertiesFile` for the JSON file of
device properties that equipment software typically writes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.telemetry.config import SourceConfig
from telemetry.records import (
    CODE,
    MAX_PROPERTY_VALUE,
    Event,
    property_allowed,
)
from telemetry.severity import SeverityTable

log = logging.getLogger(__name__)

#: Bytes read from a log per call: a burst of lines is taken over several calls
#: (0.5 s apart) instead of one long stall; 256 KiB is ~2,000 lines.
MAX_READ = 256 * 1024
#: Longer lines are cut (a binary blob in a log must not become a huge event).
MAX_LINE = 8 * 1024
#: A properties file is a small JSON object.
MAX_PROPERTIES_FILE = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class SourceContext:
    """What sources share: the severity table (and a clock for lines without a time)."""

    severity: SeverityTable
    clock: Callable[[], float] = time.time


class DeviceSource:
    """Base class of device sources; override what the source provides."""

    def __init__(self, name: str) -> None:
        self.name = name

    def poll_events(self, position: str | None) -> tuple[list[Event], str | None]:
        """Events since `position` and the new position (unchanged: nothing new)."""
        return [], position

    def readings(self) -> dict[str, float]:
        return {}

    def properties(self) -> dict[str, str]:
        return {}


class LogFileSource(DeviceSource):
    """Error codes from a log file the equipment software appends to.

    Follows the file by inode and offset: a rotated file (new inode) is read from its
    start, a truncated one (size below our offset) too. Only whole lines are read; a
    line's timestamp becomes the event's ``ts`` and its code is classified by the
    severity table.
    """

    def __init__(self, config: SourceConfig, context: SourceContext) -> None:
        super().__init__(config.name)
        self.path = Path(config.path)
        self._pattern = re.compile(config.pattern)
        self._formats = (config.timestamp_format, config.timestamp_format.replace(".%f", ""))
        self._utc = config.utc
        self._from_start = config.from_start
        self._context = context

    def poll_events(self, position: str | None) -> tuple[list[Event], str | None]:
        try:
            st = os.stat(self.path)
        except OSError:
            return [], position  # not there (yet): the equipment may be starting
        inode, offset = _parse_position(position)
        if inode != st.st_ino:
            # A new file (first run, or rotated): first run starts at its end unless
            # from_start; after a rotation the new file is read from its start.
            offset = 0 if (position is not None or self._from_start) else st.st_size
        elif st.st_size < offset:
            offset = 0  # truncated in place
        if st.st_size == offset:
            return [], f"{st.st_ino}:{offset}"
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                chunk = f.read(MAX_READ)
        except OSError as exc:
            log.warning("! %s: cannot read %s: %s", self.name, self.path, exc.strerror)
            return [], position
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) < MAX_READ:
                return [], position  # a line still being written
            end = len(chunk) - 1  # a monster line: take it as cut
        data = chunk[: end + 1]
        events = [
            e
            for line in data.split(b"\n")
            if line and (e := self._event(line[:MAX_LINE].decode("utf-8", "replace")))
        ]
        return events, f"{st.st_ino}:{offset + len(data)}"

    def _event(self, line: str) -> Event | None:
        match = self._pattern.match(line.rstrip("\r"))
        if match is None or not match["code"] or not CODE.fullmatch(match["code"]):
            return None
        code = match["code"]
        return Event(
            0,
            self._timestamp(match.groupdict().get("ts")),
            code,
            self._context.severity.classify(code),
            self.name,
            match["message"] or "",  # raw: the poller scrubs every source's events
        )

    def _timestamp(self, text: str | None) -> float:
        if text:
            for fmt in self._formats:
                try:
                    moment = datetime.strptime(text.replace("T", " "), fmt.replace("T", " "))
                except ValueError:
                    continue
                if self._utc:
                    moment = moment.replace(tzinfo=UTC)
                return moment.timestamp()  # naive = local time, as the device wrote it
        return self._context.clock()


def _parse_position(position: str | None) -> tuple[int, int]:
    if position:
        inode, _, offset = position.partition(":")
        if inode.isdigit() and offset.isdigit():
            return int(inode), int(offset)
    return -1, 0


class PropertiesFile(DeviceSource):
    """Device properties from a JSON object the equipment software writes (allow-listed)."""

    def __init__(self, path: Path, static: dict[str, str]) -> None:
        super().__init__("properties")
        self.path = path
        self._static = {k: v for k, v in static.items() if property_allowed(k)}

    def properties(self) -> dict[str, str]:
        values = dict(self._static)
        if self.path.name:
            values.update(_read_properties(self.path))
        return values


def _read_properties(path: Path) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            raw: Any = json.loads(f.read(MAX_PROPERTIES_FILE))
    except (OSError, ValueError) as exc:
        log.debug("! properties file %s unusable: %s", path, exc)
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(key, str) and property_allowed(key) and isinstance(value, str | int | float):
            out[key] = _CONTROL.sub(" ", str(value))[:MAX_PROPERTY_VALUE]
    return out


SourceFactory = Callable[[SourceConfig, SourceContext], DeviceSource]
SOURCE_TYPES: dict[str, SourceFactory] = {"logfile": LogFileSource}


def register_source_type(name: str, factory: SourceFactory) -> None:
    """Add a source type usable as ``type = "<name>"`` in ``[[sources]]``."""
    if name in SOURCE_TYPES:
        raise ValueError(f"source type {name!r} already registered")
    SOURCE_TYPES[name] = factory


def make_sources(configs: tuple[SourceConfig, ...], context: SourceContext) -> list[DeviceSource]:
    sources = []
    for config in configs:
        factory = SOURCE_TYPES.get(config.type)
        if factory is None:
            raise ValueError(f"sources.{config.name}: unknown type {config.type!r}")
        sources.append(factory(config, context))
    return sources
