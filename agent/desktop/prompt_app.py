"""The consent prompt: ``python -m agent.desktop.prompt_app`` on the device's display.

Request on stdin: ``{"name", "organisation", "mode": "view"|"control", "reason",
"timeout_s"}``. Shows who asks, from which organisation, for what, why, and a visible
countdown, with *Deny* and *Accept*. Prints ``{"answer": "accept"}`` or ``{"answer":
"deny"}`` and exits; closing the window is *Deny*. The countdown is for the person:
the agent decides the timeout and kills this program then (silence means no).

It takes no keyboard focus, so keys being typed into another program cannot answer
it, and has no keyboard shortcut for *Accept*: accepting is a deliberate click.
"""

from __future__ import annotations

import math
import time
from typing import Final

from agent.desktop.ui import BOLD, Box, button, emit, label, read_request, window

TITLE: Final = "Outlink \u2014 remote access request"
SIZE: Final = (520, 250)
ACCEPT_BUTTON: Final = Box(404, 196, 100, 38)
DENY_BUTTON: Final = Box(292, 196, 100, 38)
TICK_MS: Final = 250

WHAT: Final = {
    "view": "wants to see your screen (view only).",
    "control": "wants to see your screen and use your mouse and keyboard.",
}


def main() -> None:
    request = read_request()
    deadline = time.monotonic() + float(request["timeout_s"])
    who = str(request["name"])
    if request.get("organisation"):
        who += f" \u2014 {request['organisation']}"
    root = window(TITLE, *SIZE, where="center")
    label(root, "Remote access request", Box(16, 12, 488, 24), font=BOLD)
    label(root, who, Box(16, 44, 488, 40), font=BOLD)
    label(root, WHAT.get(str(request["mode"]), WHAT["control"]), Box(16, 86, 488, 22))
    reason = str(request.get("reason") or "")
    label(root, f"Reason: {reason}" if reason else "No reason given.", Box(16, 110, 488, 44))
    countdown = label(root, "", Box(16, 160, 488, 22), foreground="#a01010")

    def answer(value: str) -> None:
        emit(answer=value)
        root.destroy()

    button(root, "Deny", DENY_BUTTON, lambda: answer("deny"), default="active")
    button(root, "Accept", ACCEPT_BUTTON, lambda: answer("accept"))
    root.protocol("WM_DELETE_WINDOW", lambda: answer("deny"))

    def tick() -> None:
        left = max(0, math.ceil(deadline - time.monotonic()))
        countdown.configure(text=f"No answer within {left} s means Deny.")
        root.after(TICK_MS, tick)

    tick()
    root.mainloop()


if __name__ == "__main__":
    main()
