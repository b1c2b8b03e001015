"""``python -m sim.console``: the simulated scanner's operator console, a window to look at.

The one-command start puts it on the demo device's virtual screen so that a remote
desktop session has a real program to show and drive: it follows the simulator's log
(``--log``), shows the scanner's state, and has a field and buttons an engineer can
type into and click. ``Fail``/``Recover`` write the simulator's ``--control`` file, so
an alarm can be provoked from the device's own screen.
"""

from __future__ import annotations

import argparse
import tkinter as tk
from collections import deque
from pathlib import Path

POLL_MS = 1000  # the log grows every ~2 s; a human reads slower than that
TAIL_LINES = 12


class Console:
    """One window: state banner, recent log lines, a notes field, service buttons."""

    def __init__(self, root: tk.Tk, log: Path, control: Path, name: str) -> None:
        self.root, self.log, self.control = root, log, control
        self._offset = 0
        self._lines: deque[str] = deque(maxlen=TAIL_LINES)
        root.title(f"CT-9000 console — {name}")
        root.geometry("1000x640+40+60")
        root.configure(bg="#1d2733")
        self.state = tk.Label(root, text="READY", font=("DejaVu Sans", 28, "bold"),
                              bg="#1f7a4d", fg="white", pady=12)  # fmt: skip
        self.state.pack(fill="x")
        heading = tk.Label(root, text="Recent events", anchor="w", bg="#1d2733", fg="#c8d3df",
                           font=("DejaVu Sans", 12, "bold"))  # fmt: skip
        heading.pack(fill="x", padx=12, pady=(12, 0))
        self.events = tk.Text(root, height=TAIL_LINES, bg="#101820", fg="#e6edf3",
                              font=("DejaVu Sans Mono", 10), relief="flat")  # fmt: skip
        self.events.pack(fill="both", expand=True, padx=12, pady=6)
        row = tk.Frame(root, bg="#1d2733")
        row.pack(fill="x", padx=12, pady=6)
        tk.Label(row, text="Service note:", bg="#1d2733", fg="#c8d3df",
                 font=("DejaVu Sans", 12)).pack(side="left")  # fmt: skip
        self.note = tk.Entry(row, font=("DejaVu Sans", 12), width=50)
        self.note.pack(side="left", padx=8)
        self.saved = tk.Label(row, text="", bg="#1d2733", fg="#9fe0b5", font=("DejaVu Sans", 12))
        tk.Button(row, text="Save note", command=self.save_note).pack(side="left")
        self.saved.pack(side="left", padx=8)
        buttons = tk.Frame(root, bg="#1d2733")
        buttons.pack(fill="x", padx=12, pady=(0, 12))
        tk.Button(buttons, text="Simulate tube fault", command=lambda: self.set_mode("fail E9001"),
                  bg="#b3261e", fg="white").pack(side="left")  # fmt: skip
        tk.Button(buttons, text="Recover", command=lambda: self.set_mode("ok")).pack(
            side="left", padx=8
        )
        self.poll()

    def save_note(self) -> None:
        self.saved.configure(text=f"saved: {self.note.get()[:40]}")

    def set_mode(self, mode: str) -> None:
        self.control.write_text(mode + "\n")

    def poll(self) -> None:
        """Read what the simulator appended since last time (it rotates the file)."""
        try:
            size = self.log.stat().st_size
            if size < self._offset:
                self._offset = 0
            with self.log.open("r", errors="replace") as f:
                f.seek(self._offset)
                chunk = f.read(64 * 1024)
                self._offset = f.tell()
        except OSError:
            chunk = ""
        for line in chunk.splitlines():
            # The console is what a remote viewer sees: keep patient fields off it.
            self._lines.append(line.split(" patient=", 1)[0][:160])
        if chunk:
            self.events.delete("1.0", "end")
            self.events.insert("end", "\n".join(self._lines))
        failing = any(" E9" in line for line in list(self._lines)[-3:])
        self.state.configure(
            text="FAULT — exposure inhibited" if failing else "READY",
            bg="#b3261e" if failing else "#1f7a4d",
        )
        self.root.after(POLL_MS, self.poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.console",
        description="The simulated scanner's operator console: follows the simulator's "
        "log and shows its state; Fail and Recover write its control file.",
    )
    parser.add_argument("--log", type=Path, required=True, help="the simulator's log file")
    parser.add_argument("--control", type=Path, required=True, help="the simulator's control file")
    parser.add_argument("--name", default="demo-ct-01")
    args = parser.parse_args(argv)
    root = tk.Tk()
    Console(root, args.log, args.control, args.name)
    root.mainloop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
