"""The local answer drop: ``outlink-agent desktop accept|deny|end ID`` -> the running agent.

The agent never listens (R19), not even on a local socket, so the command leaves a
file in ``<data_dir>/desktop/answers/`` and waits for the agent's result file::

    <nonce>.answer   {"session_id": "...", "action": "accept"}   written by the command
    <nonce>.result   {"ok": true, "state": "accepted"}            written by the agent
                     {"ok": false, "error": "not_found", "message": "..."}

Both are written to a temporary name and renamed, so neither side reads half a file.
The agent scans the directory only while a request prompts or a session runs (every
:data:`POLL_INTERVAL`); an answer for nothing active is therefore not taken, and the
command withdraws it after its timeout and says so.

Who may answer: whoever may write the directory. The agent creates it 0700 (the
systemd unit's state directory is the agent user's), so that is the agent's user and
root (``sudo outlink-agent desktop accept ...``); the agent also refuses files not
owned by one of them or not regular files (a symlink planted by someone else).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from protocol.desktop import SessionId, parse_session_id
from protocol.envelope import ERR_BAD_REQUEST, MessageError

logger = logging.getLogger(__name__)

SUBDIR: Final = Path("desktop") / "answers"
ACTIONS: Final = ("accept", "deny", "end")

POLL_INTERVAL: Final = 0.25
"""How often the agent looks for answers while a prompt or session is active: a local
answer takes effect within a quarter second; idle devices do not poll at all."""

MAX_FILE: Final = 1024
"""An answer is ~80 bytes; anything larger is not one of ours."""

RESULT_WAIT: Final = 5.0
"""How long the command waits for the agent (a few poll intervals, plus a loaded box)."""

_NONCE: Final = re.compile(r"[0-9a-f]{16}")
_COMMAND_POLL: Final = 0.05
# Readable by the agent whichever of its users (agent user or root) wrote it; an answer
# is no secret, and the directory's mode is what restricts who can write one.
_ANSWER_MODE: Final = 0o644


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer taken from the drop; ``reply`` with the same nonce."""

    nonce: str
    session_id: SessionId
    action: str


def answers_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / SUBDIR


def _write_atomic(directory: Path, name: str, data: bytes, mode: int) -> None:
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # the umask must not make it unreadable for the other side
    finally:
        os.close(fd)
    os.replace(tmp, directory / name)


# -- the command's side ---------------------------------------------------------------------


def submit(
    directory: Path, session_id: str, action: str, *, timeout: float = RESULT_WAIT
) -> dict[str, Any] | None:
    """Drop an answer and wait for the agent's result. ``None``: no agent took it within
    ``timeout`` (nothing active with that id, or no agent running); it is withdrawn.

    Raises ``FileNotFoundError`` if the directory does not exist (the agent never ran
    with desktop sessions on this data_dir) and ``ValueError`` for a bad id or action.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    try:
        session_id = parse_session_id(session_id)
    except MessageError as exc:
        raise ValueError(exc.message) from None
    if not directory.is_dir():
        raise FileNotFoundError(str(directory))
    nonce = secrets.token_hex(8)
    body = json.dumps({"session_id": session_id, "action": action}).encode()
    _write_atomic(directory, f"{nonce}.answer", body, _ANSWER_MODE)
    result_path = directory / f"{nonce}.result"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = _take_result(result_path)
        if result is not None:
            return result
        time.sleep(_COMMAND_POLL)  # another process: nothing to wait on but the file
    try:
        (directory / f"{nonce}.answer").unlink()
    except FileNotFoundError:  # taken at the last moment: the result follows at once
        time.sleep(POLL_INTERVAL)
        return _take_result(result_path)
    return None


def _take_result(path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        result = json.loads(data)
    except ValueError:
        return {"ok": False, "error": "internal", "message": "unreadable result"}
    return result if isinstance(result, dict) else None


# -- the agent's side -------------------------------------------------------------------------


class AnswerBox:
    """The agent's end of the drop. Blocking file I/O: call from a worker thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self) -> None:
        """Create the directory (0700) and tighten its mode if someone loosened it."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = stat.S_IMODE(self.directory.stat().st_mode)
        if mode & 0o077:
            logger.warning("! %s was mode %o; set to 0700", self.directory, mode)
            self.directory.chmod(0o700)

    def take(self) -> list[Answer]:
        """Every answer waiting, oldest first; each file is removed. Unusable files are
        removed too, answered with an error result when their name allows it."""
        try:
            entries = [e for e in os.scandir(self.directory) if e.name.endswith(".answer")]
        except FileNotFoundError:
            return []
        answers = []
        for entry in sorted(entries, key=_mtime):
            nonce = entry.name.removesuffix(".answer")
            try:
                answers.append(self._read(Path(entry.path), nonce))
            except MessageError as exc:
                logger.warning("! local answer %s refused: %s", entry.name, exc.message)
                if _NONCE.fullmatch(nonce):
                    self.reply(nonce, {"ok": False, "error": exc.code, "message": exc.message})
            except OSError as exc:
                logger.warning("! local answer %s unreadable: %s", entry.name, exc)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        return answers

    def _read(self, path: Path, nonce: str) -> Answer:
        if not _NONCE.fullmatch(nonce):
            raise MessageError(ERR_BAD_REQUEST, "not an answer file name")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0):
                raise MessageError(
                    ERR_BAD_REQUEST, "answer file not written by the agent's user or root"
                )
            if st.st_size > MAX_FILE:
                raise MessageError(ERR_BAD_REQUEST, "answer file too large")
            data = os.read(fd, MAX_FILE + 1)
        finally:
            os.close(fd)
        try:
            body = json.loads(data)
        except ValueError:
            raise MessageError(ERR_BAD_REQUEST, "answer file is not JSON") from None
        if not isinstance(body, dict) or body.get("action") not in ACTIONS:
            raise MessageError(ERR_BAD_REQUEST, f"action must be one of {', '.join(ACTIONS)}")
        return Answer(nonce, parse_session_id(body.get("session_id")), body["action"])

    def reply(self, nonce: str, result: dict[str, Any]) -> None:
        """Leave the result for the waiting command."""
        try:
            _write_atomic(self.directory, f"{nonce}.result", json.dumps(result).encode(), 0o600)
        except OSError as exc:
            logger.warning("! cannot write the local answer's result: %s", exc)


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0
