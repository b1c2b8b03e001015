"""The session indicator: ``python -m agent.desktop.indicator_app`` on the device's display.

Request on stdin: ``{"name", "mode": "view"|"control"}``. A small topmost window in
the top-right corner, "Remote session by <name>", with *End session*; clicking it (or
closing the window) prints ``{"event": "end"}`` and exits. The agent ends the session
then, and also if this program dies: no session runs without its indicator.
"""

from __future__ import annotations

from typing import Final

from agent.desktop.ui import BOLD, Box, button, emit, label, read_request, window

TITLE: Final = "Outlink \u2014 remote session"
SIZE: Final = (540, 44)
END_BUTTON: Final = Box(422, 6, 110, 32)
MAX_SHOWN_NAME: Final = 28


def main() -> None:
    request = read_request()
    name = str(request["name"])
    if len(name) > MAX_SHOWN_NAME:
        name = name[: MAX_SHOWN_NAME - 1] + "\u2026"
    what = "" if request.get("mode") == "control" else " (view only)"
    root = window(TITLE, *SIZE, where="top-right")
    root.configure(background="#fff4c0")
    label(
        root,
        f"Remote session by {name}{what}",
        Box(10, 6, 406, 32),
        font=BOLD,
        background="#fff4c0",
    )

    def end() -> None:
        emit(event="end")
        root.destroy()

    button(root, "End session", END_BUTTON, end)
    root.protocol("WM_DELETE_WINDOW", end)
    root.mainloop()


if __name__ == "__main__":
    main()
