"""Device sources (log file, properties) and the system collector."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil

from agent.telemetry.collectors import SystemCollector
from agent.telemetry.config import SourceConfig
from agent.telemetry.sources import LogFileSource, PropertiesFile, SourceContext
from telemetry.records import Severity, metric_allowed, property_allowed
from telemetry.severity import SeverityTable

CONTEXT = SourceContext(
    SeverityTable({"I*": "routine", "W*": "warning", "E9*": "urgent"}, "warning")
)
LINE = "2025-11-27 10:00:0{n}.123 ERROR [tube] E900{n} Tube hot patient=DOE^JOHN from 10.0.0.{n}\n"


def source(path: Path, **kwargs: object) -> LogFileSource:
    return LogFileSource(SourceConfig("app", str(path), **kwargs), CONTEXT)  # type: ignore[arg-type]


def test_a_new_source_starts_at_the_end_then_reads_whole_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(LINE.format(n=1))
    src = source(log)
    events, pos = src.poll_events(None)
    assert events == []  # history is not replayed
    with open(log, "a") as f:
        f.write(LINE.format(n=2) + "2025-11-27 10:00:03 INFO heartbeat, no code\n")
        f.write("2025-11-27 10:00:04.000 ERROR [x] E9004 half a li")
    events, pos2 = src.poll_events(pos)
    assert [(e.code, e.severity) for e in events] == [("E9002", Severity.URGENT)]
    assert events[0].message == "Tube hot patient=DOE^JOHN from 10.0.0.2"  # the poller scrubs
    assert events[0].source == "app"
    assert src.poll_events(pos2) == ([], pos2)  # the half line waits
    with open(log, "a") as f:
        f.write("ne\n")
    events, _ = src.poll_events(pos2)
    assert [e.code for e in events] == ["E9004"]


def test_rotation_and_truncation_start_the_new_file_from_its_beginning(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    src = source(log)
    _, pos = src.poll_events(None)
    log.write_text(LINE.format(n=1))
    events, pos = src.poll_events(pos)
    assert [e.code for e in events] == ["E9001"]
    os.replace(log, tmp_path / "app.log.1")
    log.write_text(LINE.format(n=2))
    events, pos = src.poll_events(pos)
    assert [e.code for e in events] == ["E9002"]
    log.write_text("2025-11-27 10:00:03 ERROR [t] E9003 hot\n")  # truncated in place: shorter
    events, pos = src.poll_events(pos)
    assert [e.code for e in events] == ["E9003"]


def test_from_start_and_timestamps(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("2025-11-27 10:00:01 WARN [det] W2001 warm\n")
    (event,), _ = source(log, from_start=True, utc=True).poll_events(None)
    assert event.ts == 1764237601.0 and event.severity is Severity.WARNING
    assert source(tmp_path / "missing.log").poll_events(None) == ([], None)


def test_properties_are_allow_listed_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    path.write_text(
        json.dumps({"model": "CT-9000", "serial": 42, "operator": "Jane", "software.recon": "2"})
    )
    props = PropertiesFile(path, {"vendor": "Acme", "patient": "x"}).properties()
    assert props == {"vendor": "Acme", "model": "CT-9000", "serial": "42", "software.recon": "2"}
    path.write_text("not json")
    assert PropertiesFile(path, {}).properties() == {}


def test_every_collected_metric_is_allow_listed_and_processes_are_found() -> None:
    me = psutil.Process()
    name = me.name()
    collector = SystemCollector(disks=("/", "/nonexistent"), processes=(name, "no-such-proc"))
    collector.collect()
    values = collector.collect()
    assert all(metric_allowed(k) for k in values), [k for k in values if not metric_allowed(k)]
    assert values["proc.up:no-such-proc"] == 0.0
    assert "disk.percent:/" in values and "disk.percent:/nonexistent" not in values
    assert {"cpu.percent", "mem.percent", "uptime.h", "agent.rss_mb"} <= values.keys()
    assert all(property_allowed(k) for k in ("model", "software.x"))
