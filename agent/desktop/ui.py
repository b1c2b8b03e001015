"""What the device's two windows share: the consent prompt (`prompt_app`) and the
session indicator (`indicator_app`).

Each is a separate small Tk program the agent runs on the device's display (so a Tk
main loop never shares a process with the agent's event loop, and a hung X server
cannot stall the agent). The protocol is one JSON object on stdin (the request: names
never travel on the command line, where ``ps`` shows them) and JSON lines on stdout
(what the person did). The agent keeps stdin open; end of file means the agent is
gone, and the window goes with it.

Layouts are fixed in pixels (``place``), so the buttons' positions are known
constants: tests click them with ``xdotool`` at those positions in the window found
by its title, as a person would.
"""

from __future__ import annotations

import json
import os
import sys
import tkinter as tk
from typing import Any, Final, NamedTuple

MAX_REQUEST: Final = 4096
"""The request line: names and a reason, already bounded by the agent."""

KEEP_ON_TOP_MS: Final = 1000
"""Raise the window again this often. ``-topmost`` needs a window manager to mean
anything; without one (kiosk devices, Xvfb) a later window would cover ours."""

FONT: Final = ("DejaVu Sans", 10)
BOLD: Final = ("DejaVu Sans", 11, "bold")


class Box(NamedTuple):
    """A widget's place inside its window, in pixels."""

    x: int
    y: int
    w: int
    h: int

    @property
    def center(self) -> tuple[int, int]:
        return self.x + self.w // 2, self.y + self.h // 2


def read_request() -> dict[str, Any]:
    """The agent's request (one JSON object on the first line of stdin)."""
    line = sys.stdin.buffer.readline(MAX_REQUEST)
    request = json.loads(line) if line.strip() else None
    if not isinstance(request, dict):
        raise SystemExit("expected one JSON object on stdin")
    return request


def emit(**fields: Any) -> None:
    """Tell the agent what happened (one JSON line)."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def window(title: str, width: int, height: int, where: str) -> tk.Tk:
    """A fixed-size topmost window, ``where`` = "center" or "top-right" of the screen,
    that closes when the agent goes away."""
    root = tk.Tk()
    root.title(title)
    root.resizable(False, False)
    sw, sh = root.winfo_screenwidth(), root.winfo_screenheight()
    x, y = ((sw - width) // 2, (sh - height) // 3) if where == "center" else (sw - width - 8, 8)
    root.geometry(f"{width}x{height}+{x}+{y}")
    root.configure(background="white")
    root.attributes("-topmost", True)

    def keep_on_top() -> None:
        root.lift()
        root.after(KEEP_ON_TOP_MS, keep_on_top)

    def stdin_readable(_file: Any, _mask: int) -> None:
        if not os.read(sys.stdin.fileno(), 512):  # EOF: the agent is gone
            root.destroy()

    root.tk.createfilehandler(sys.stdin, tk.READABLE, stdin_readable)
    root.after(KEEP_ON_TOP_MS, keep_on_top)
    return root


def label(root: tk.Tk, text: str, box: Box, *, font: Any = FONT, **options: Any) -> tk.Label:
    options.setdefault("background", "white")
    widget = tk.Label(
        root, text=text, font=font, anchor="w", justify="left", wraplength=box.w, **options
    )
    widget.place(x=box.x, y=box.y, width=box.w, height=box.h)
    return widget


def button(root: tk.Tk, text: str, box: Box, command: Any, **options: Any) -> tk.Button:
    widget = tk.Button(root, text=text, font=FONT, command=command, **options)
    widget.place(x=box.x, y=box.y, width=box.w, height=box.h)
    return widget
