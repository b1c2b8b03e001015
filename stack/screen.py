"""The demo device's equipment: a virtual screen (Xvfb), the simulated scanner and its console.

On a headless machine the device still needs a screen for remote desktop sessions and
a program that behaves like equipment software for telemetry. Without Xvfb installed
the stack runs without the screen (telemetry still works) and says so.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from stack import processes
from stack.layout import Layout

SCREEN_GEOMETRY = "1280x800x24"
FIRST_DISPLAY = 42  # clear of the :0/:1 a desktop session or CI image may use
X_SOCKETS = Path("/tmp/.X11-unix")  # noqa: S108 (where every X server puts its socket)


def _display_file(lay: Layout) -> Path:
    return lay.root / "display"


def display_name(lay: Layout) -> str:
    """The demo device's X display, chosen once (a free number) and kept in ./var."""
    path = _display_file(lay)
    if path.exists():
        return path.read_text().strip()
    number = FIRST_DISPLAY
    lock = Path("/tmp")  # noqa: S108 (X servers' lock files live there)
    while (X_SOCKETS / f"X{number}").exists() or (lock / f".X{number}-lock").exists():
        number += 1
    path.write_text(f":{number}\n")
    return f":{number}"


def have_screen() -> bool:
    return shutil.which("Xvfb") is not None


def start_screen(lay: Layout) -> str | None:
    """Start Xvfb for the demo device; returns its display, or None without Xvfb."""
    if not have_screen():
        print("outlink: Xvfb is not installed; the demo device has no screen (apt install xvfb)")
        return None
    display = display_name(lay)
    socket = X_SOCKETS / f"X{display.lstrip(':')}"
    argv = ["Xvfb", display, "-screen", "0", SCREEN_GEOMETRY, "-nolisten", "tcp"]
    processes.start(lay.run, lay.logs, "screen", argv)
    processes.wait_until(socket.exists, 15.0, f"virtual screen {display}")
    return display


def equipment_files(lay: Layout) -> dict[str, Path]:
    """Where the simulated scanner writes its log, reads its control word, puts properties."""
    folder = lay.root / "equipment"
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "log": folder / "ct-9000.log",
        "control": folder / "control",
        "props": folder / "properties.json",
    }


def start_equipment(lay: Layout, display: str | None) -> dict[str, Path]:
    """The scanner simulator, and its console window on the device's screen."""
    files = equipment_files(lay)
    sim = [sys.executable, "-m", "sim", "--log", str(files["log"]), "--serial", "CT9-0001",
           "--control", str(files["control"]), "--props", str(files["props"])]  # fmt: skip
    processes.start(lay.run, lay.logs, "simulator", sim)
    if display is not None:
        console = [sys.executable, "-m", "sim.console", "--log", str(files["log"]),
                   "--control", str(files["control"]), "--name", "demo-ct-01"]  # fmt: skip
        processes.start(lay.run, lay.logs, "console", console, env={"DISPLAY": display})
    return files
