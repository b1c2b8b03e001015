"""The program the desktop tests drive: known pixels on screen, and a log of its input.

Run as ``python tkapp.py`` on the test X server. It fills the screen (1280x800 at
+0+0; Xvfb has no window manager to move it), paints :data:`BACKGROUND` with a
:data:`BLOCK_COLOUR` block at :data:`BLOCK`, and writes one JSON object per line to
stdout for everything it sees: ``ready``, ``key``/``keyup`` (keysym and the character
Tk decoded), ``button``/``release`` (Tk reports the wheel as buttons 4 and 5 on X11).
Commands arrive as JSON lines on stdin; ``fill`` paints a rectangle, ``page`` shows a
page of numbered text lines below y=:data:`PAGE_TOP` scrolled by ``offset`` pixels.
Each answers ``done`` only after the X server has executed the drawing (a round trip
follows it), so a test can capture right after reading the answer.
"""

from __future__ import annotations

import json
import sys
import tkinter as tk
from typing import Any

WIDTH, HEIGHT = 1280, 800
BACKGROUND = "#204060"
BLOCK_COLOUR = "#d02020"
BLOCK = (100, 100, 200, 100)  # x, y, w, h
PAGE_TOP = 256
LINE_HEIGHT = 20


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main() -> None:
    root = tk.Tk()
    root.title("outlink-test")
    root.geometry(f"{WIDTH}x{HEIGHT}+0+0")
    canvas = tk.Canvas(
        root, width=WIDTH, height=HEIGHT, bg=BACKGROUND, highlightthickness=0, borderwidth=0
    )
    canvas.place(x=0, y=0)
    x, y, w, h = BLOCK
    canvas.create_rectangle(x, y, x + w, y + h, fill=BLOCK_COLOUR, outline="")

    def key(kind: str) -> Any:
        return lambda e: emit(kind, keysym=e.keysym, char=e.char, num=e.keysym_num, state=e.state)

    def button(kind: str) -> Any:
        return lambda e: emit(kind, num=e.num, x=e.x_root, y=e.y_root)

    root.bind_all("<KeyPress>", key("key"))
    root.bind_all("<KeyRelease>", key("keyup"))
    canvas.bind("<ButtonPress>", button("button"))
    canvas.bind("<ButtonRelease>", button("release"))

    def command(_file: Any, _mask: int) -> None:
        line = sys.stdin.readline()
        if not line:
            root.destroy()
            return
        cmd = json.loads(line)
        if cmd["cmd"] == "page":
            canvas.delete("page")
            canvas.create_rectangle(
                0, PAGE_TOP, WIDTH, HEIGHT, fill="white", outline="", tags="page"
            )
            first = cmd["offset"] // LINE_HEIGHT
            for n in range(first, first + (HEIGHT - PAGE_TOP) // LINE_HEIGHT + 2):
                y = PAGE_TOP + n * LINE_HEIGHT - cmd["offset"]
                if PAGE_TOP <= y <= HEIGHT - LINE_HEIGHT:
                    text = f"line {n:4d}: " + " ".join(f"word{(n * 7 + k) % 97}" for k in range(24))
                    canvas.create_text(8, y, text=text, anchor="nw", fill="black", tags="page")
        elif cmd["cmd"] == "fill":
            canvas.create_rectangle(
                cmd["x"],
                cmd["y"],
                cmd["x"] + cmd["w"],
                cmd["y"] + cmd["h"],
                fill=cmd["color"],
                outline="",
            )
        root.update_idletasks()  # run the canvas redraw now
        root.winfo_pointerxy()  # a round trip: the server has executed the drawing
        emit("done", id=cmd.get("id"))

    root.tk.createfilehandler(sys.stdin, tk.READABLE, command)

    def ready() -> None:
        root.focus_force()
        root.update_idletasks()
        root.winfo_pointerxy()
        emit("ready")

    root.wait_visibility(canvas)
    root.after_idle(ready)
    root.mainloop()


if __name__ == "__main__":
    main()
