"""The simulated equipment: a CT scanner's control software, as far as its log shows.

Every tick (``--interval``, 2 s by default) it writes one to three lines in the format
the agent's default pattern reads::

    2025-11-27 10:00:01.123 INFO  [acq] I1001 Scan started protocol=CHEST_PA patient="DOE^JOHN" ...
    2025-11-27 10:00:13.456 WARN  [det] W2001 Detector temperature 38.2 C above nominal
    2025-11-27 10:00:14.001 ERROR [tube] E9001 Tube overtemperature: exposure inhibited

Codes: ``I1xxx`` routine, ``W2xxx`` warnings, ``E4xxx`` errors (occasionally, at random),
``E9xxx`` urgent (only while failing). Scan lines carry a patient name, id, birth date,
operator and workstation address, as real equipment logs do: the agent must scrub them.

Control: the ``--control`` file is read every tick; when it changes, its first word
sets the mode: ``ok``, ``fail [CODE]`` (an urgent code every tick until recovered), or
``stop`` (exit 0).
SIGUSR1 fails with E9001, SIGUSR2 recovers, SIGTERM stops. ``--props`` writes the
device-properties JSON the agent's ``properties_file`` reads. The log is rotated to
``FILE.1`` past ``--max-bytes``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

URGENT_CODES = {
    "E9001": "Tube overtemperature: exposure inhibited (tube {temp:.1f} C)",
    "E9002": "Gantry rotation fault: emergency stop engaged",
    "E9003": "High-voltage generator arc detected, kV dropped to {kv} kV",
}
ERRORS = {
    "E4012": "Table motor overcurrent, retrying move ({amps:.1f} A)",
    "E4031": "Reconstruction job {job} failed: out of GPU memory",
}
WARNINGS = {
    "W2001": "Detector temperature {temp:.1f} C above nominal",
    "W2007": "Disk /data at {pct} % capacity",
}
PROTOCOLS = ("CHEST_PA", "HEAD_ROUTINE", "ABDOMEN_CONTRAST", "KNEE_LAT")
PATIENTS = (
    ('"DOE^JOHN"', "Jane Smith"),
    ('"MARTIN^CLAIRE^M"', "Paul Durand"),
    ('"NGUYEN^AN"', "Maria Garcia"),
)
PROPERTIES = {
    "model": "CT-9000",
    "vendor": "Acme Medical",
    "software_version": "4.2.1",
    "software.recon": "2.8.0",
    "firmware_version": "1.0.7",
}


@dataclass
class Simulator:
    """Produces log lines; the mode changes with `fail`/`recover`. Deterministic per seed."""

    rng: random.Random = field(default_factory=random.Random)
    error_rate: float = 0.02
    failing: str | None = None
    _scan: int = 0

    def fail(self, code: str = "E9001") -> None:
        self.failing = code if code in URGENT_CODES else "E9001"

    def recover(self) -> None:
        self.failing = None

    def lines(self, now: datetime) -> list[str]:
        """The lines of one tick."""
        rng = self.rng
        out: list[str] = []
        if self.failing:
            text = URGENT_CODES[self.failing].format(
                temp=rng.uniform(92, 99), kv=rng.choice((80, 100))
            )
            out.append(log_line(now, "ERROR", "tube", self.failing, text))
            return out
        self._scan += 1
        patient, operator = PATIENTS[self._scan % len(PATIENTS)]
        out.append(
            log_line(
                now,
                "INFO",
                "acq",
                "I1001",
                f"Scan started protocol={rng.choice(PROTOCOLS)} patient={patient} "
                f"PID={rng.randrange(10**7, 10**8)} DOB {rng.randrange(1930, 2015)}-"
                f"{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} operator {operator} "
                f"ws 10.20.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            )
        )
        out.append(
            log_line(now, "INFO", "acq", "I1002", f"Scan completed in {rng.uniform(3, 30):.1f} s")
        )
        roll = rng.random()
        if roll < self.error_rate:
            code = rng.choice(sorted(ERRORS))
            text = ERRORS[code].format(amps=rng.uniform(4, 9), job=rng.randrange(1000, 9999))
            out.append(log_line(now, "ERROR", "table", code, text))
        elif roll < self.error_rate * 4:
            code = rng.choice(sorted(WARNINGS))
            text = WARNINGS[code].format(temp=rng.uniform(36, 42), pct=rng.randrange(80, 95))
            out.append(log_line(now, "WARN", "det", code, text))
        else:
            out.append(f"{_stamp(now)} DEBUG [sys] heartbeat ok")
        return out


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def log_line(now: datetime, level: str, component: str, code: str, text: str) -> str:
    return f"{_stamp(now)} {level:<5} [{component}] {code} {text}"


def write_properties(path: Path, serial: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**PROPERTIES, "serial": serial}, indent=1))
    os.replace(tmp, path)


def _read_control(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        return path.read_text().split()
    except OSError:
        return []


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)  # noqa: S311 - a simulation, not a secret
    sim = Simulator(rng, error_rate=args.error_rate)
    log_path = Path(args.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if args.props:
        write_properties(Path(args.props), args.serial)
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum == signal.SIGUSR1:
            sim.fail()
        elif signum == signal.SIGUSR2:
            sim.recover()
        else:
            stopping = True

    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    control = Path(args.control) if args.control else None
    ticks = 0
    next_tick = time.monotonic()
    last: list[str] = []
    while not stopping and (args.ticks == 0 or ticks < args.ticks):
        words = _read_control(control)
        if words[:1] == ["stop"]:
            break
        if words != last:  # a new command; signals may have changed the mode since
            last = words
            if words[:1] == ["fail"]:
                sim.fail(words[1] if len(words) > 1 else "E9001")
            elif words[:1] == ["ok"]:
                sim.recover()
        lines = sim.lines(datetime.now())
        with open(log_path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        if log_path.stat().st_size > args.max_bytes:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))
        ticks += 1
        next_tick += args.interval
        time.sleep(max(0.0, next_tick - time.monotonic()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, help="the log file to append to")
    parser.add_argument("--control", help="file whose first word sets the mode (ok/fail/stop)")
    parser.add_argument("--props", help="write device properties JSON here")
    parser.add_argument("--serial", default="SN-0001", help="the device's serial number")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds per tick")
    parser.add_argument("--ticks", type=int, default=0, help="stop after N ticks (0: never)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--error-rate", type=float, default=0.02, help="E4xxx per tick")
    parser.add_argument("--max-bytes", type=int, default=10 * 2**20, help="rotate past this")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
