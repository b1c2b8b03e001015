"""Remote desktop streaming, Outlink against the peer: same screen, same program, same browser.

One Xvfb (1920x1080, no TCP) runs ``desktop_workload.py``, which paints numbered changes
in scripted modes (office typing, a scrolling page, full-screen video) and answers a
mouse click at once. Each system streams that display to the same headless Chromium
(Playwright, the Debian ``/usr/bin/chromium``), one after the other:

* ``peer``: x11vnc + websockify + noVNC (``desktop_peer.py``);
* ``ours``: agent + relay + the portal's viewer (``desktop_ours.py``).

``desktop_probe.js``, injected into the viewer page before its own scripts, reads the
workload's markers off the viewer's canvas once per displayed browser frame and counts
the WebSocket bytes; this script drives the modes and clicks and adds the server-side
CPU (psutil, whole process trees). Per system:

* ``fps_<mode>``         distinct frame markers displayed per second (``source_fps_*``:
                         what the workload painted);
* ``bytes_<mode>``       WebSocket payload bytes per second, server -> viewer;
* ``cpu_pct_<mode>``     server-side CPU, % of one core (``..._by_process``: each
                         server process); ``cpu_per_frame`` (ms) = CPU over all three
                         modes / frames displayed in them (also per mode);
* ``latency_p50/p95``    ms from the mouse down in the page to the click marker's new
                         value on the canvas (ms, ``performance.now()`` in the page);
* ``psnr``               dB, the displayed canvas against the screen (mss) once the
                         office screen is still (99 = identical);
* ``idle_cpu_pct``       server-side CPU on a still screen, % of one core.

``ratios`` = ours / peer for the common keys. Usage::

    python bench/desktop_stream.py [--quick | --full] [--only peer|ours] [--shots DIR]

``--quick`` runs every mode briefly (< 3 min for both systems). ``--shots DIR`` saves a
screenshot of each viewer page after each mode, to check the figures by eye.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import math
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import desktop_workload as wl
import mss
import psutil
from desktop_ours import OursStack
from desktop_peer import PeerStack
from desktop_stack import Child, Stack, Unavailable, cpu_seconds, wait_until
from harness import PYTHON, BenchPKI, emit, free_port, percentile, progress
from PIL import Image, ImageChops, ImageStat
from playwright.sync_api import BrowserContext, Page, ViewportSize, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT: ViewportSize = {"width": 1920, "height": 1200}
"""The whole 1920x1080 screen fits 1:1 under a viewer's toolbar."""

PROBE = Path(__file__).with_name("desktop_probe.js")
WORKLOAD = Path(__file__).with_name("desktop_workload.py")
X11_SOCKETS = Path("/tmp/.X11-unix")

MODES = ("office", "scroll", "video")
VIEWER_TIMEOUT = 60.0
"""Connect + first full screen; generous for a loaded 2-core machine."""
CLICK_TIMEOUT = 5.0
"""A click whose effect is not displayed by then counts as lost."""
LOSSLESS_PSNR = 99.0


@dataclass(frozen=True, slots=True)
class Profile:
    warmup: float  # s after a mode starts before its window opens
    window: float  # s measured per mode
    idle: float  # s of the idle CPU window
    clicks: int
    settle: float  # s the office screen stays still before the quality snapshot


PROFILES = {
    "quick": Profile(warmup=1.5, window=6.0, idle=5.0, clicks=20, settle=1.0),
    "default": Profile(warmup=2.0, window=15.0, idle=10.0, clicks=40, settle=2.0),
    "full": Profile(warmup=3.0, window=30.0, idle=30.0, clicks=100, settle=2.0),
}


# -- the screen and the program on it ---------------------------------------------------


@contextlib.contextmanager
def xvfb(workdir: Path) -> Iterator[tuple[str, Child]]:
    """A private Xvfb on a free display number; yields ``(":N", child)``."""
    for _ in range(5):  # another process may take the number between check and start
        n = next(
            i
            for i in range(90, 1000)
            if not Path(f"/tmp/.X{i}-lock").exists() and not (X11_SOCKETS / f"X{i}").exists()
        )
        child = Child(
            "Xvfb",
            ["Xvfb", f":{n}", "-screen", "0", f"{wl.WIDTH}x{wl.HEIGHT}x24", "-nolisten", "tcp"],
            workdir / "xvfb.log",
        )
        try:
            wait_until((X11_SOCKETS / f"X{n}").exists, 10, "the X socket", [child])
        except RuntimeError:
            child.stop()
            continue
        try:
            yield f":{n}", child
        finally:
            child.stop()
        return
    raise RuntimeError("Xvfb did not start")


class Workload:
    """``desktop_workload.py`` on the display: switch modes, read its reports."""

    def __init__(self, display: str, log: Path) -> None:
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [PYTHON, str(WORKLOAD)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, "DISPLAY": display},
                text=True,
            )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="workload-reader").start()
        self.expect("ready", 60.0)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def expect(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                code = self.proc.poll()
                raise RuntimeError(f"workload: no {event!r} (exit code {code})") from None
            if got["event"] == event:
                return got

    def mode(self, name: str) -> dict[str, Any]:
        """Switch to mode ``name``; returns the report of the mode that ended."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"mode": name}) + "\n")
        self.proc.stdin.flush()
        return self.expect("mode_done")

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # EOF ends the program
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- measuring one stack ------------------------------------------------------------------


def psnr(shown: Image.Image, source: Image.Image) -> float:
    """PSNR in dB over R, G, B (:data:`LOSSLESS_PSNR` when identical)."""
    if shown.size != source.size:
        source = source.resize(shown.size, Image.Resampling.BILINEAR)  # a scaled viewer
    stat = ImageStat.Stat(ImageChops.difference(shown, source))
    mse = sum(stat.sum2) / (3 * shown.width * shown.height)
    return LOSSLESS_PSNR if mse == 0 else min(LOSSLESS_PSNR, 10 * math.log10(255**2 / mse))


@dataclass(frozen=True, slots=True)
class Env:
    """What every stack's measurement shares: the screen, the program, the browser."""

    display: str
    xserver: psutil.Process
    workload: Workload
    browser: list[psutil.Process]
    profile: Profile
    shots: Path | None


@dataclass(frozen=True, slots=True)
class Window:
    """One measured interval: the probe's frame log and byte counts (``probe``), CPU
    seconds of each of the stack's server processes (``servers``), of the X server and
    of the browser, and the interval's length in page time (s)."""

    probe: dict[str, Any]
    servers: dict[str, float]
    xcpu: float
    bcpu: float
    span: float

    @property
    def cpu(self) -> float:
        return sum(self.servers.values())

    def split(self) -> dict[str, float]:
        """Each server process's CPU, % of one core."""
        return {name: round(100 * cpu / self.span, 2) for name, cpu in self.servers.items()}


class Run:
    """One stack's measurement: the page, the workload, the server processes."""

    def __init__(self, stack: Stack, page: Page, env: Env) -> None:
        self.stack, self.page, self.env = stack, page, env
        self.workload, self.profile = env.workload, env.profile
        self.procs = stack.processes()
        self.figures: dict[str, Any] = {}
        self.mode_cpu = 0.0
        self.mode_frames = 0

    def shot(self, label: str) -> None:
        if self.env.shots is not None:
            self.page.screenshot(path=str(self.env.shots / f"{self.stack.name}-{label}.png"))

    def window(self, seconds: float) -> Window:
        """Measure for ``seconds`` (see :class:`Window`)."""
        roots = {name: [proc] for name, proc in self.procs.items()}
        roots |= {"-x": [self.env.xserver], "-browser": self.env.browser}
        start = self.page.evaluate("() => __bench.take()")
        before = {name: cpu_seconds(r) for name, r in roots.items()}
        time.sleep(seconds)
        got: dict[str, Any] = self.page.evaluate("() => __bench.take()")
        used = {name: cpu_seconds(r) - before[name] for name, r in roots.items()}
        xcpu, bcpu = used.pop("-x"), used.pop("-browser")
        return Window(got, used, xcpu, bcpu, (got["t"] - start["t"]) / 1000)

    def mode(self, name: str) -> None:
        p = self.profile
        self.workload.mode(name)
        time.sleep(p.warmup)
        w = self.window(p.window)
        got, cpu, span = w.probe, w.cpu, w.span
        self.shot(name)
        report = self.workload.mode("idle")
        painted = range(report["first"], report["last"] + 1)
        frames = len({v for _, v in got["log"] if v in painted})
        f = self.figures
        f[f"fps_{name}"] = round(frames / span, 2)
        f[f"source_fps_{name}"] = round(report["changes"] / report["seconds"], 2)
        f[f"bytes_{name}"] = round(got["rx"] / span)
        f[f"bytes_per_frame_{name}"] = round(got["rx"] / frames) if frames else None
        f[f"cpu_pct_{name}"] = round(100 * cpu / span, 1)
        f[f"cpu_pct_{name}_by_process"] = w.split()
        f[f"cpu_per_frame_{name}"] = round(1000 * cpu / frames, 2) if frames else None
        f[f"x_server_cpu_pct_{name}"] = round(100 * w.xcpu / span, 1)
        f[f"browser_cpu_pct_{name}"] = round(100 * w.bcpu / span, 1)
        f[f"probe_reads_per_s_{name}"] = round(got["reads"] / span, 1)
        self.mode_cpu += cpu
        self.mode_frames += frames
        progress(
            f"{self.stack.name} {name}: {frames / span:.1f} fps displayed "
            f"(painted {report['changes'] / report['seconds']:.1f}), "
            f"{got['rx'] / span / 1000:.0f} kB/s, CPU {100 * cpu / span:.0f} %"
        )

    def quality_and_idle(self) -> None:
        """Office screen, then still: PSNR of the canvas against the screen, idle CPU."""
        p = self.profile
        self.workload.mode("office")
        time.sleep(p.warmup)
        last = self.workload.mode("idle")["last"]
        self.page.wait_for_function(
            f"() => __bench.frame === {(last + 1) & 0xFFFF}", timeout=VIEWER_TIMEOUT * 1000
        )
        time.sleep(p.settle)
        url: str = self.page.evaluate("() => __bench.snapshot()")
        shown = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
        with mss.MSS(display=self.env.display) as grabber:
            raw = grabber.grab(grabber.monitors[1])
            source = Image.frombytes("RGB", raw.size, raw.bgra, "raw", "BGRX")
        self.figures["psnr"] = round(psnr(shown, source), 2)
        if self.env.shots is not None:
            shown.save(self.env.shots / f"{self.stack.name}-canvas.png")
            source.save(self.env.shots / "screen.png")
        w = self.window(p.idle)
        got, cpu, span = w.probe, w.cpu, w.span
        self.figures["idle_cpu_pct"] = round(100 * cpu / span, 2)
        self.figures["idle_cpu_pct_by_process"] = w.split()
        self.figures["idle_bytes_per_s"] = round(got["rx"] / span)
        progress(
            f"{self.stack.name} still screen: PSNR {self.figures['psnr']} dB, "
            f"idle CPU {100 * cpu / span:.2f} %"
        )

    def latency(self) -> None:
        """Clicks on the canvas on a still screen: mouse down -> click marker displayed."""
        page, rng = self.page, random.Random(7)
        x, y = page.evaluate("([x, y]) => __bench.pagePoint(x, y)", list(wl.CLICK_POINT))
        page.mouse.move(x, y)
        samples: list[float] = []
        lost = 0
        for _ in range(self.profile.clicks):
            want = (page.evaluate("() => __bench.click") + 1) & 0xFF
            page.evaluate("n => __bench.arm(n)", want)
            page.mouse.down()
            try:
                page.wait_for_function(
                    "() => __bench.latency() !== null", timeout=CLICK_TIMEOUT * 1000, polling=20
                )
                samples.append(page.evaluate("() => __bench.latency()"))
            except PlaywrightTimeout:  # the click's effect was never displayed
                lost += 1
            page.mouse.up()
            page.evaluate("() => __bench.disarm()")
            time.sleep(rng.uniform(0.15, 0.35))  # the screen settles; no rhythm to lock onto
        f = self.figures
        f["latency_p50"] = round(percentile(samples, 0.5), 1) if samples else None
        f["latency_p95"] = round(percentile(samples, 0.95), 1) if samples else None
        f["latency_min"] = round(min(samples), 1) if samples else None
        f["latency_samples"] = len(samples)
        f["latency_lost"] = lost
        progress(
            f"{self.stack.name} latency: p50 {f['latency_p50']} ms, p95 {f['latency_p95']} ms "
            f"({len(samples)} clicks, {lost} lost)"
        )

    def run(self) -> dict[str, Any]:
        self.quality_and_idle()
        self.latency()
        for name in MODES:
            self.mode(name)
        f = self.figures
        f["cpu_per_frame"] = (
            round(1000 * self.mode_cpu / self.mode_frames, 2) if self.mode_frames else None
        )
        return f


def measure(
    make: Callable[[], AbstractContextManager[Stack]], context: BrowserContext, env: Env
) -> dict[str, Any]:
    """Start the stack ``make()`` builds, measure it, stop it; ``{"unavailable": why}``
    if it cannot run here."""
    try:
        stack_cm = make()
    except Unavailable as exc:
        progress(f"not measured: {exc}")
        return {"unavailable": str(exc)}
    env.workload.mode("idle")
    with stack_cm as stack:
        page = context.new_page()
        try:
            progress(f"{stack.name}: opening the viewer")
            try:
                stack.open_viewer(page, VIEWER_TIMEOUT)
            except Exception:
                if env.shots is not None:
                    page.screenshot(path=str(env.shots / f"{stack.name}-no-viewer.png"))
                raise
            page.evaluate("() => __bench.start()")
            run = Run(stack, page, env)
            try:
                return run.run()
            except Exception as exc:  # keep what was measured; say what broke
                traceback.print_exc()
                return {**run.figures, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            page.close()


def browser_processes() -> list[psutil.Process]:
    """The launched Chromium's top process(es) (Playwright's driver started them)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            parent = proc.parent()
            if "chrom" in proc.name() and (parent is None or "chrom" not in parent.name()):
                found.append(proc)
    return found


RATIO_KEYS = (
    "latency_p50",
    "latency_p95",
    "fps_office",
    "fps_scroll",
    "fps_video",
    "bytes_office",
    "bytes_scroll",
    "bytes_video",
    "cpu_per_frame",
    "cpu_per_frame_office",
    "cpu_per_frame_scroll",
    "cpu_per_frame_video",
    "psnr",
    "idle_cpu_pct",
)


def ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in RATIO_KEYS:
        a, b = ours.get(key), peer.get(key)
        out[key] = (
            round(a / b, 3)
            if isinstance(a, int | float) and isinstance(b, int | float) and b
            else None
        )
    return out


def targets(ours: dict[str, Any], r: dict[str, float | None]) -> dict[str, bool | None]:
    """The issue's targets; ``None`` where a figure is missing."""

    def check(*values: Any) -> bool | None:
        return None if any(v is None for v in values) else all(values)

    def le(a: Any, b: float) -> bool | None:
        return None if a is None else a <= b

    def ge(a: Any, b: float) -> bool | None:
        return None if a is None else a >= b

    return {
        "latency_p50": check(le(r["latency_p50"], 0.6), le(ours.get("latency_p50"), 50.0)),
        "fps_scroll": ge(r["fps_scroll"], 1.5),
        "fps_video": ge(r["fps_video"], 1.5),
        "bytes_office": check(le(r["bytes_office"], 0.8), ge(r["psnr"], 1.0)),
        "idle_cpu_agent": le(ours.get("idle_cpu_pct_by_process", {}).get("agent"), 1.0),
        "cpu_per_frame": le(r["cpu_per_frame"], 1.0),
    }


def probe_config() -> dict[str, Any]:
    """What ``desktop_probe.js`` needs to know of the workload's screen and markers."""
    markers = (wl.FRAME_MARKER, wl.CLICK_MARKER)
    return {
        "width": wl.WIDTH,
        "block": wl.BLOCK,
        "frame": {"x": wl.FRAME_MARKER.x, "y": wl.FRAME_MARKER.y, "bits": wl.FRAME_MARKER.bits},
        "click": {"x": wl.CLICK_MARKER.x, "y": wl.CLICK_MARKER.y, "bits": wl.CLICK_MARKER.bits},
        "area": [max(m.x + m.width for m in markers), max(m.y + m.height for m in markers)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="profile")
    group.add_argument("--full", action="store_const", const="full", dest="profile")
    parser.add_argument("--only", choices=("peer", "ours"))
    parser.add_argument("--shots", type=Path, help="save viewer screenshots here")
    args = parser.parse_args()
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so every finally block stops its processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    profile = PROFILES[args.profile or "default"]
    if args.shots is not None:
        args.shots.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"profile": args.profile or "default"}
    with contextlib.ExitStack() as cleanup:  # unwinds in reverse: browser, program, Xvfb
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="outlink-dbench-")))
        pki = BenchPKI(workdir / "pki")
        display, xserver = cleanup.enter_context(xvfb(workdir))
        progress(f"Xvfb {display} up; starting the workload")
        workload = Workload(display, workdir / "workload.log")
        cleanup.callback(workload.close)
        browser = cleanup.enter_context(sync_playwright()).chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        cleanup.callback(browser.close)
        env = Env(display, xserver.process, workload, browser_processes(), profile, args.shots)
        stacks: dict[str, Callable[[], AbstractContextManager[Stack]]] = {
            "peer": lambda: PeerStack(
                display,
                workdir,
                pki.server_cert,
                pki.server_key,
                pki.ca_file,
                (free_port(), free_port()),
            ),
            "ours": lambda: OursStack(display, workdir, pki),
        }
        for name, make in stacks.items():
            if args.only in (None, name):
                context = browser.new_context(viewport=VIEWPORT, ignore_https_errors=True)
                context.add_init_script(
                    script=f"window.__benchConfig = {json.dumps(probe_config())};"
                )
                context.add_init_script(path=PROBE)
                try:
                    result[name] = measure(make, context, env)
                finally:
                    context.close()
    ours, peer = result.get("ours"), result.get("peer")
    if isinstance(ours, dict) and isinstance(peer, dict) and "unavailable" not in ours | peer:
        result["ratios"] = ratios(ours, peer)
        result["targets"] = targets(ours, result["ratios"])
    else:
        result["ratios"] = None
    emit(result)


if __name__ == "__main__":
    main()
