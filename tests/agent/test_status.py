"""status.json / alarms.json: what `outlink-agent status` shows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent import errors
from agent.errors import Failure
from agent.status import StatusBook, read_status

UNTRUSTED = Failure(errors.RELAY_CERT_UNTRUSTED, True, "relay certificate: unable to get issuer")
REFUSED = Failure(errors.NETWORK, False, "ConnectionRefusedError: Connection refused")


def test_status_is_written_through(tmp_path: Path) -> None:
    book = StatusBook(tmp_path / "data")
    book.connecting("wss://relay/agent", "DIRECT")
    assert read_status(tmp_path / "data")["state"] == "connecting"
    book.failed("wss://relay/agent", REFUSED)
    book.waiting(3.0)
    status = read_status(tmp_path / "data")
    assert status["state"] == "waiting"
    assert status["last_error"]["code"] == errors.NETWORK
    assert status["alarms"] == []  # retryable: no alarm
    book.connected("wss://relay/agent", "DIRECT", "dev-1")
    status = read_status(tmp_path / "data")
    assert status["connected"] is True
    assert status["since"]
    book.stopped()
    assert read_status(tmp_path / "data")["state"] == "stopped"


def test_needs_a_human_raises_a_distinct_alarm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    book = StatusBook(tmp_path)
    with caplog.at_level(logging.CRITICAL, logger="agent.status"):
        book.failed("wss://relay/agent", UNTRUSTED)
        book.failed("wss://relay/agent", UNTRUSTED)
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 2
    assert critical[0].alarm == errors.RELAY_CERT_UNTRUSTED  # type: ignore[attr-defined]
    alarms = read_status(tmp_path)["alarms"]
    assert len(alarms) == 1
    assert alarms[0]["code"] == errors.RELAY_CERT_UNTRUSTED
    assert alarms[0]["count"] == 2


def test_alarms_survive_a_restart_and_clear_on_connection(tmp_path: Path) -> None:
    StatusBook(tmp_path).failed("wss://relay/agent", UNTRUSTED)
    book = StatusBook(tmp_path)  # the agent restarted
    assert read_status(tmp_path)["alarms"][0]["code"] == errors.RELAY_CERT_UNTRUSTED
    book.connected("wss://relay/agent", "DIRECT", "dev-1")
    assert read_status(tmp_path)["alarms"] == []
    assert json.loads((tmp_path / "alarms.json").read_text()) == []


def test_corrupt_files_do_not_stop_anything(tmp_path: Path) -> None:
    (tmp_path / "alarms.json").write_text("{not json")
    (tmp_path / "status.json").write_text("[1, 2]")
    assert read_status(tmp_path) == {"alarms": []}
    StatusBook(tmp_path).connecting("wss://relay/agent", "DIRECT")
    assert read_status(tmp_path)["state"] == "connecting"


def test_unwritable_data_dir_is_logged_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    book = StatusBook(blocker / "sub")  # a directory below a file cannot exist
    book.failed("wss://relay/agent", UNTRUSTED)  # no exception
