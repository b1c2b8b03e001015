"""System metrics with psutil: what one poll measures (R13, R16).

Every value is a number under an allow-listed name (`telemetry.records.METRIC_NAMES`);
labels are mount points, sensor and process names from the configuration. Rates
(disk and network throughput) are computed between two polls. Cheap on purpose (R32):
no per-call sampling intervals, the equipment processes are looked up once and
re-scanned only when one of them has gone, and values are rounded so a poll stays
around 0.5 KiB on the wire.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

log = logging.getLogger(__name__)

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_./-]")


def label(text: str) -> str:
    """A metric label from a configured name (allowed characters only, <= 64)."""
    return _LABEL_BAD.sub("_", text)[:64] or "_"


@dataclass
class _Counters:
    at: float
    disk: tuple[int, int] | None
    net: tuple[int, int] | None


class SystemCollector:
    """Measure the host and the equipment software's processes. Blocking: call it in a
    worker thread. `collect()` returns ``{metric key: value}``."""

    def __init__(
        self,
        *,
        disks: Iterable[str] = ("/",),
        processes: Iterable[str] = (),
        temperatures: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._disks = tuple(disks)
        self._watched = tuple(processes)
        self._temperatures = temperatures
        self._clock = clock
        self._procs: dict[str, list[psutil.Process]] = {}
        self._me = psutil.Process()
        self._last: _Counters | None = None
        psutil.cpu_percent(interval=None)  # primes the "since last call" counters
        self._me.cpu_percent(interval=None)

    def collect(self) -> dict[str, float]:
        values: dict[str, float] = {}
        values["cpu.percent"] = round(psutil.cpu_percent(interval=None), 1)
        values["cpu.load1"] = round(os.getloadavg()[0], 2)
        memory = psutil.virtual_memory()
        values["mem.percent"] = round(memory.percent, 1)
        values["mem.available_mb"] = round(memory.available / 2**20, 1)
        values["swap.percent"] = round(psutil.swap_memory().percent, 1)
        for mount in self._disks:
            try:
                usage = psutil.disk_usage(mount)
            except OSError:
                continue
            values[f"disk.percent:{label(mount)}"] = round(usage.percent, 1)
            values[f"disk.free_gb:{label(mount)}"] = round(usage.free / 2**30, 2)
        self._rates(values)
        if self._temperatures:
            self._temps(values)
        values["uptime.h"] = round((time.time() - psutil.boot_time()) / 3600, 2)
        for name in self._watched:
            self._process(name, values)
        with self._me.oneshot():
            values["agent.cpu"] = round(self._me.cpu_percent(interval=None), 2)
            values["agent.rss_mb"] = round(self._me.memory_info().rss / 2**20, 1)
        return values

    def _rates(self, values: dict[str, float]) -> None:
        now = self._clock()
        disk = psutil.disk_io_counters()
        net = psutil.net_io_counters()
        current = _Counters(
            now,
            (disk.read_bytes, disk.write_bytes) if disk is not None else None,
            (net.bytes_sent, net.bytes_recv) if net is not None else None,
        )
        last, self._last = self._last, current
        if last is None or now <= last.at:
            return
        elapsed = now - last.at
        for prefix, new, old in (
            ("disk.", current.disk, last.disk),
            ("net.", current.net, last.net),
        ):
            if new is None or old is None:
                continue
            names = ("read_kbps", "write_kbps") if prefix == "disk." else ("sent_kbps", "recv_kbps")
            for name, a, b in zip(names, new, old, strict=True):
                values[prefix + name] = round(max(a - b, 0) / 1024 / elapsed, 1)

    def _temps(self, values: dict[str, float]) -> None:
        try:
            sensors = psutil.sensors_temperatures()
        except (AttributeError, OSError):  # not on this platform / no permission
            self._temperatures = False
            return
        for sensor, readings in sorted(sensors.items())[:8]:
            current = [r.current for r in readings if r.current is not None]
            if current:
                values[f"temp.c:{label(sensor)}"] = round(max(current), 1)

    def _process(self, name: str, values: dict[str, float]) -> None:
        procs = [p for p in self._procs.get(name, []) if _alive(p)]
        if not procs:
            procs = self._procs[name] = _find(name)
        key = label(name)
        values[f"proc.up:{key}"] = 1.0 if procs else 0.0
        if not procs:
            return
        cpu = rss = 0.0
        for proc in procs:
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(interval=None)
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
        values[f"proc.cpu:{key}"] = round(cpu, 1)
        values[f"proc.rss_mb:{key}"] = round(rss / 2**20, 1)


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _find(name: str) -> list[psutil.Process]:
    """Processes named `name`, or whose command line has `name` as one argument."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.pid == me:
            continue
        info = proc.info
        cmdline = info.get("cmdline") or []
        if info.get("name") == name or name in cmdline:
            try:
                proc.cpu_percent(interval=None)  # prime: the next poll reads a real value
            except psutil.Error:
                continue
            found.append(proc)
    return found
