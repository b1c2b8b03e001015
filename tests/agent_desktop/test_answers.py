"""The local answer drop, both sides: the command's `submit` and the agent's `AnswerBox`."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.desktop.answers import Answer, AnswerBox, submit
from tests.conftest import UNIT

SESSION = "6f1c2b0e-8d7a-4c55-9e0b-1a2b3c4d5e6f"
NONCE = "0123456789abcdef"


@pytest.fixture
def box(tmp_path: Path) -> AnswerBox:
    answers = AnswerBox(tmp_path / "desktop" / "answers")
    answers.prepare()
    return answers


def take_one(box: AnswerBox, timeout: float = 10 * UNIT) -> Answer:
    """What the agent's watcher does, until an answer arrives from the other thread."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        taken = box.take()
        if taken:
            [answer] = taken
            return answer
        time.sleep(0.01)
    raise AssertionError("no answer arrived")


def test_prepare_makes_a_private_directory(tmp_path: Path) -> None:
    box = AnswerBox(tmp_path / "answers")
    box.prepare()
    assert stat.S_IMODE(box.directory.stat().st_mode) == 0o700
    box.directory.chmod(0o777)
    box.prepare()
    assert stat.S_IMODE(box.directory.stat().st_mode) == 0o700


def test_answer_and_result_round_trip(box: AnswerBox) -> None:
    results: list[dict[str, Any] | None] = []
    command = threading.Thread(
        target=lambda: results.append(submit(box.directory, SESSION, "accept", timeout=10 * UNIT))
    )
    command.start()
    answer = take_one(box)
    assert (answer.session_id, answer.action) == (SESSION, "accept")
    box.reply(answer.nonce, {"ok": True, "state": "accepted"})
    command.join(10 * UNIT)
    assert results == [{"ok": True, "state": "accepted"}]
    assert list(box.directory.iterdir()) == []  # answer taken, result read: nothing left


def test_an_answer_nobody_takes_is_withdrawn(box: AnswerBox) -> None:
    assert submit(box.directory, SESSION, "deny", timeout=0.2 * UNIT) is None
    assert list(box.directory.iterdir()) == []
    assert box.take() == []


def test_command_input_is_checked(box: AnswerBox, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        submit(box.directory, SESSION, "approve")
    with pytest.raises(ValueError):
        submit(box.directory, "../../etc/passwd", "accept")
    with pytest.raises(FileNotFoundError):
        submit(tmp_path / "nowhere", SESSION, "accept")


def drop(box: AnswerBox, name: str, body: bytes | dict[str, Any]) -> Path:
    path = box.directory / name
    path.write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
    return path


def result_of(box: AnswerBox, nonce: str = NONCE) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((box.directory / f"{nonce}.result").read_text())
    return data


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        {"session_id": SESSION, "action": "approve"},
        {"session_id": "../x", "action": "accept"},
        {"session_id": SESSION, "action": "accept", "pad": "x" * 2000},
    ],
)
def test_bad_answers_are_refused_and_removed(box: AnswerBox, body: Any) -> None:
    drop(box, f"{NONCE}.answer", body)
    assert box.take() == []
    result = result_of(box)
    assert (result["ok"], result["error"]) == (False, "bad_request") and result["message"]
    assert not (box.directory / f"{NONCE}.answer").exists()


def test_files_the_agent_did_not_expect_are_ignored_or_removed(box: AnswerBox) -> None:
    drop(box, "not-a-nonce.answer", {"session_id": SESSION, "action": "accept"})
    drop(box, "notes.txt", b"left alone")
    assert box.take() == []  # removed, and no result: the name was not one of ours
    assert sorted(p.name for p in box.directory.iterdir()) == ["notes.txt"]


def test_a_symlink_is_not_followed(box: AnswerBox, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"session_id": SESSION, "action": "accept"}))
    (box.directory / f"{NONCE}.answer").symlink_to(target)
    assert box.take() == []
    assert target.exists() and not (box.directory / f"{NONCE}.answer").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file someone else owns")
def test_a_file_from_another_user_is_refused(box: AnswerBox) -> None:
    path = drop(box, f"{NONCE}.answer", {"session_id": SESSION, "action": "accept"})
    os.chown(path, 65534, 65534)  # nobody
    assert box.take() == []
    assert result_of(box)["error"] == "bad_request"
