"""The X11 clipboard backend against real X clients on the test Xvfb: ``xclip`` (Debian
package ``xclip``) and a Tk program that copies and pastes as a desktop program does."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from desktop.clipboard import MAX_TEXT, POLL_INTERVAL, X11Clipboard
from tests.conftest import UNIT

T = 10 * UNIT

pytestmark = pytest.mark.skipif(
    shutil.which("xclip") is None, reason="xclip is not installed (Debian package xclip)"
)

TK_CLIPBOARD = r"""
import json, sys, tkinter as tk
root = tk.Tk()
root.withdraw()
def command(_f, _m):
    line = sys.stdin.readline()
    if not line:
        root.destroy()
        return
    cmd = json.loads(line)
    if cmd["cmd"] == "copy":
        root.clipboard_clear()
        root.clipboard_append(cmd["text"])
        root.update()
        print(json.dumps({"copied": True}), flush=True)
    else:
        try:
            text = root.clipboard_get()
        except tk.TclError:
            text = None
        print(json.dumps({"pasted": text}), flush=True)
root.tk.createfilehandler(sys.stdin, tk.READABLE, command)
print(json.dumps({"ready": True}), flush=True)
root.mainloop()
"""


class TkClipboard:
    """A Tk program's clipboard: ``copy`` as Ctrl+C would, ``paste`` as Ctrl+V would."""

    def __init__(self, display: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TK_CLIPBOARD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "DISPLAY": display},
            text=True,
            encoding="utf-8",
        )
        self.lines: queue.Queue[dict[str, object]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self.lines.get(timeout=T) == {"ready": True}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def _ask(self, **cmd: object) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.lines.get(timeout=T)

    def copy(self, text: str) -> None:
        assert self._ask(cmd="copy", text=text) == {"copied": True}

    def paste(self) -> object:
        return self._ask(cmd="paste")["pasted"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # EOF ends the program
        self.proc.wait(timeout=T)
        self._reader.join(T)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def tk_clipboard(xdisplay: str) -> Iterator[TkClipboard]:
    program = TkClipboard(xdisplay)
    try:
        yield program
    finally:
        program.close()


class Copies:
    """What the backend reports as copied on the device, waited for (no sleeps)."""

    def __init__(self) -> None:
        self.texts: queue.Queue[str] = queue.Queue()

    def __call__(self, text: str) -> None:
        self.texts.put(text)

    def next(self) -> str:
        return self.texts.get(timeout=T)

    def none_within(self, seconds: float) -> bool:
        try:
            self.texts.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


def xclip_out(display: str, selection: str = "clipboard", target: str | None = None) -> bytes:
    args = ["xclip", "-o", "-selection", selection, *(["-t", target] if target else [])]
    done = subprocess.run(
        args, env={**os.environ, "DISPLAY": display}, capture_output=True, timeout=T, check=True
    )
    return done.stdout


def xclip_in(display: str, data: bytes) -> None:
    """``xclip -i``: copies ``data`` and serves it (in the background) until replaced."""
    subprocess.run(
        ["xclip", "-i", "-selection", "clipboard", "-loops", "1"],
        input=data,
        env={**os.environ, "DISPLAY": display},
        timeout=T,
        check=True,
    )


def test_text_from_the_viewer_is_pasted_by_x_programs(
    xdisplay: str, tk_clipboard: TkClipboard
) -> None:
    clip = X11Clipboard(xdisplay)
    try:
        text = "Grüße, 東京 — line one\nline two ✓"
        assert clip.put(text)
        assert xclip_out(xdisplay).decode("utf-8") == text
        assert tk_clipboard.paste() == text
        assert xclip_out(xdisplay, "primary").decode("utf-8") == text  # middle-click paste
        targets = xclip_out(xdisplay, target="TARGETS").decode().split()
        assert {"TARGETS", "UTF8_STRING", "STRING"} <= set(targets)
        assert xclip_out(xdisplay, target="STRING") == text.encode("latin-1", "replace")
        assert clip.put("second")
        assert xclip_out(xdisplay) == b"second"
    finally:
        clip.close()


def test_the_largest_text_is_served_in_one_piece(xdisplay: str) -> None:
    clip = X11Clipboard(xdisplay)
    try:
        assert clip.max_bytes == MAX_TEXT
        big = ("0123456789abcdef" * (MAX_TEXT // 16 + 1))[:MAX_TEXT]
        assert clip.put(big)
        assert xclip_out(xdisplay) == big.encode()
        assert not clip.put(big + "x")  # over the limit: refused, the previous text stays
        assert xclip_out(xdisplay) == big.encode()
    finally:
        clip.close()


def test_text_copied_on_the_device_is_reported(xdisplay: str, tk_clipboard: TkClipboard) -> None:
    copies = Copies()
    clip = X11Clipboard(xdisplay, copies)
    try:
        tk_clipboard.copy("from the device: Ünïcødé ✓")
        assert copies.next() == "from the device: Ünïcødé ✓"
        xclip_in(xdisplay, b"via xclip")
        assert copies.next() == "via xclip"
        # Our own ownership (text from the viewer) is not echoed back.
        assert clip.put("from the viewer")
        assert xclip_out(xdisplay) == b"from the viewer"
        tk_clipboard.copy("after")
        assert copies.next() == "after"
    finally:
        clip.close()


def test_copies_by_the_program_that_owns_the_clipboard_are_seen(
    xdisplay: str, tk_clipboard: TkClipboard
) -> None:
    """Tk copies again without telling the X server: the poll sees it."""
    copies = Copies()
    clip = X11Clipboard(xdisplay, copies)
    try:
        tk_clipboard.copy("first")
        assert copies.next() == "first"
        tk_clipboard.copy("second")
        assert copies.next() == "second"
        assert copies.none_within(2 * POLL_INTERVAL)  # unchanged text is not sent again
    finally:
        clip.close()


def test_what_was_copied_before_stays_on_the_device(
    xdisplay: str, tk_clipboard: TkClipboard
) -> None:
    tk_clipboard.copy("copied before the session")
    copies = Copies()
    clip = X11Clipboard(xdisplay, copies)
    try:
        assert copies.none_within(2 * POLL_INTERVAL)
        tk_clipboard.copy("copied during the session")
        assert copies.next() == "copied during the session"
    finally:
        clip.close()


def test_copies_over_the_limit_stay_on_the_device(xdisplay: str, tk_clipboard: TkClipboard) -> None:
    copies = Copies()
    clip = X11Clipboard(xdisplay, copies)
    try:
        xclip_in(xdisplay, b"x" * (MAX_TEXT + 1))
        tk_clipboard.copy("small")
        assert copies.next() == "small"  # the large one was never reported
    finally:
        clip.close()


def test_close_gives_the_clipboard_up(xdisplay: str) -> None:
    clip = X11Clipboard(xdisplay)
    assert clip.put("gone soon")
    assert xclip_out(xdisplay) == b"gone soon"
    clip.close()
    clip.close()  # idempotent
    done = subprocess.run(
        ["xclip", "-o", "-selection", "clipboard"],
        capture_output=True,
        env={**os.environ, "DISPLAY": xdisplay},
        timeout=T,
    )
    assert done.stdout == b""
