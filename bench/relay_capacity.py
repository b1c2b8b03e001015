"""How many idle agents one relay process holds, and what each one costs it.

Everything is real: every simulated agent has its OWN device certificate and P-256 key
issued by ``pki/`` (and its ``devices``/``certificates`` rows in the migrated database,
so presence is tracked as for real agents), dials ``/agent`` over mutual TLS, runs a
real tunnel with the DEFAULT settings (keepalive PING after 15 s of silence on the
client, 20 s on the relay), opens its ``control`` channel and sends ``hello`` with the
agent's own ``agent.control.ControlChannel``, then stays connected. The relay is ONE
process started by its CLI with a TOML config (per-source admission limits off: every
simulated agent comes from 127.0.0.1).

The agents live in several client processes (each raises RLIMIT_NOFILE to the hard
limit and holds a slice), so the client side is not the bottleneck. Measured:

* ``agents``: tunnels the relay holds at the end of the idle window (its own gauge,
  cross-checked with what the clients still hold);
* ``rss_per_agent_kib``: (relay RSS with everyone connected - RSS before) / agents;
* ``idle_cpu_pct``: relay CPU time (user+system, psutil) over the idle window / wall
  time, in % of one core. The window covers at least one client keepalive period, so
  every agent's PING/PONG falls in it;
* ``handshakes_per_s``: agents connected (TLS + WebSocket + tunnel + hello answered)
  per second while all clients dial at once, the clients sharing the 2 cores.

Usage: ``python bench/relay_capacity.py [--quick|--full] [--agents N]``.
Targets (``--full``): >= 10,000 agents, <= 64 KiB RSS each, <= 10 % of one core idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from harness import (
    PYTHON,
    ROOT,
    BenchPKI,
    RelayProcess,
    child_processes,
    client_tls,
    create_database,
    emit,
    percentile,
    progress,
    raise_fd_limit,
    read_json_line,
    report,
)
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from agent.control import ControlChannel, Registry
from tunnel import SUBPROTOCOLS, Role
from tunnel.aio import Tunnel, websocket_options

TARGET_RSS_PER_AGENT_KIB = 64
TARGET_IDLE_CPU_PCT = 10.0
# Handshakes each client process has in flight at once. With 4 clients that is 128,
# well inside the relay's listen backlog (1024), so no SYN is dropped and retried.
CONNECT_CONCURRENCY = 32
# One agent's whole connect (TLS, WebSocket, tunnel, hello) may take this long under load.
CONNECT_TIMEOUT = 60.0
# Children report progress every this many agents.
PROGRESS_EVERY = 500
# How long preparing (TLS contexts) and connecting may take in all, per 1,000 agents.
PHASE_TIMEOUT_PER_1000 = 60.0
# Relay RSS is read after this settling pause once everyone is connected, so the
# presence flush (every 1 s) and the hellos' allocations are done.
SETTLE = 2.0
# Writing a tracemalloc snapshot of a relay holding 10,000 agents takes a while.
SNAPSHOT_TIMEOUT = 120.0
# py-spy samples per second, and how long it may take to write its output.
PY_SPY_RATE = 100
PY_SPY_STOP_TIMEOUT = 60.0
# Lines/frames listed in the tracemalloc breakdown.
TRACE_TOP = 15


@dataclass(frozen=True)
class Profile:
    agents: int
    clients: int
    window: float


PROFILES = {
    # 15 s, not 10: one client keepalive period, so every agent's PING is in the window.
    "quick": Profile(agents=1000, clients=2, window=15.0),
    "default": Profile(agents=5000, clients=4, window=30.0),
    "full": Profile(agents=10_000, clients=4, window=30.0),
}


# -- the client processes --------------------------------------------------------------


class SimulatedAgent:
    """One agent: tunnel + control channel + hello, then idle with keepalives."""

    def __init__(self, device_id: str, ssl: Any) -> None:
        self.device_id = device_id
        self.ssl = ssl
        self.tunnel: Tunnel | None = None
        self.tasks: list[asyncio.Task[Any]] = []

    async def connect(self, url: str) -> None:
        ws = await connect(
            url,
            ssl=self.ssl,
            subprotocols=[Subprotocol(p) for p in SUBPROTOCOLS],
            open_timeout=CONNECT_TIMEOUT,
            **websocket_options(),
        )
        tunnel = self.tunnel = Tunnel(ws, role=Role.CLIENT, name=self.device_id)
        self.tasks.append(asyncio.create_task(tunnel.run()))
        registry = Registry()
        control = ControlChannel(await tunnel.open_channel("control"), registry)
        self.tasks.append(asyncio.create_task(control.run()))
        await control.request("hello", version="bench", capabilities=registry.capabilities)

    @property
    def alive(self) -> bool:
        return self.tunnel is not None and not self.tunnel.closed.is_set()


async def run_client(url: str, ca: Path, devices: list[tuple[str, str]]) -> None:
    """Hold a slice of the agents: prepare, wait for "go" on stdin, connect, hold."""
    raise_fd_limit()
    agents = [SimulatedAgent(d, client_tls(ca, Path(pem))) for d, pem in devices]
    report({"prepared": len(agents)})
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await stdin.readline()  # "go"
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    done = 0

    async def dial(agent: SimulatedAgent) -> None:
        nonlocal done
        async with gate:
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await agent.connect(url)
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - t0)
            done += 1
            if done % PROGRESS_EVERY == 0:
                report({"connected": done})

    t0 = time.perf_counter()
    await asyncio.gather(*(dial(a) for a in agents))
    elapsed = time.perf_counter() - t0
    report(
        {
            "ready": True,
            "connected": len(latencies),
            "errors": errors,
            "seconds": elapsed,
            "latencies": latencies,
        }
    )
    await stdin.readline()  # "report": after the idle window
    report({"alive": sum(a.alive for a in agents)})
    await stdin.read()  # EOF: exit at once; the relay is stopped by the parent anyway
    os._exit(0)


# -- the parent ------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    """Sum of the samples of one metric in Prometheus text (0 if absent)."""
    total = 0.0
    for match in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE):
        total += float(match.group(1))
    return total


def connection_frames(text: str) -> float:
    """Frames the relay received on channel 0 (PING/PONG/GOAWAY) of agent tunnels."""
    total = 0.0
    pattern = r"^outlink_relay_frames_total\{([^}]*)\} (\S+)$"
    for match in re.finditer(pattern, text, re.MULTILINE):
        labels = match.group(1)
        if 'kind="_connection"' in labels and 'direction="in"' in labels:
            total += float(match.group(2))
    return total


def rss(proc: psutil.Process) -> int:
    return int(proc.memory_info().rss)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def send_line(proc: asyncio.subprocess.Process, line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    await proc.stdin.drain()


async def snapshot(relay: RelayProcess, number: int) -> tracemalloc.Snapshot:
    """Ask the traced relay for its ``number``-th tracemalloc snapshot and load it."""
    assert relay.trace_dir is not None
    path = relay.trace_dir / f"snapshot-{number}.tracemalloc"
    os.kill(relay.pid, signal.SIGUSR1)
    async with asyncio.timeout(SNAPSHOT_TIMEOUT):
        # Another process writes it (under a temporary name, then renamed): poll.
        while not path.exists():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return tracemalloc.Snapshot.load(str(path))


def _is_project(filename: str) -> bool:
    return "/site-packages/" not in filename and "/lib/python3" not in filename


def _short(filename: str) -> str:
    """A file name relative to the repository, site-packages or the stdlib."""
    for marker in (
        f"{ROOT}/",
        "/site-packages/",
        f"/lib/python{sys.version_info[0]}.{sys.version_info[1]}/",
    ):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def memory_breakdown(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, agents: int
) -> dict[str, Any]:
    """Python heap growth per agent, by allocating line and by relay/tunnel frame."""
    stats = after.compare_to(before, "traceback")
    total = sum(s.size_diff for s in stats)
    by_line: dict[str, int] = {}
    by_file: dict[str, int] = {}
    by_own_code: dict[str, int] = {}
    for stat in stats:
        frames = list(stat.traceback)  # oldest call first, the allocating line last
        innermost = frames[-1] if frames else None
        if innermost is not None:
            key = f"{_short(innermost.filename)}:{innermost.lineno}"
            by_line[key] = by_line.get(key, 0) + stat.size_diff
            key = _short(innermost.filename)
            by_file[key] = by_file.get(key, 0) + stat.size_diff
        # The innermost frame in the project's own code (relay_server, tunnel, ...).
        own = next((f for f in reversed(frames) if _is_project(f.filename)), None)
        key = f"{_short(own.filename)}:{own.lineno}" if own is not None else "?"
        by_own_code[key] = by_own_code.get(key, 0) + stat.size_diff

    def top(table: dict[str, int]) -> dict[str, float]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:TRACE_TOP]
        return {k: round(v / agents / 1024, 2) for k, v in ranked}

    return {
        "python_heap_per_agent_kib": round(total / agents / 1024, 1),
        "top_allocating_files_kib_per_agent": top(by_file),
        "top_allocating_lines_kib_per_agent": top(by_line),
        "top_project_frames_kib_per_agent": top(by_own_code),
    }


class Profiler:
    """``py-spy record`` of the relay for one phase (raw collapsed stacks, for flame
    graphs or ``sort | uniq``); nothing at all when no directory was given."""

    def __init__(self, directory: Path | None, pid: int) -> None:
        self.directory = directory
        self.pid = pid
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, phase: str) -> None:
        if self.directory is None:
            return
        self.proc = subprocess.Popen(
            [
                *(str(Path(PYTHON).with_name("py-spy")), "record", "--pid", str(self.pid)),
                *("--rate", str(PY_SPY_RATE), "--format", "raw", "--nonblocking"),
                *("--output", str(self.directory / f"relay-{phase}.txt")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """SIGINT makes py-spy write its output and exit."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(PY_SPY_STOP_TIMEOUT)
            self.proc = None


async def bench(
    profile: Profile, mode: str, trace_memory: bool, py_spy: Path | None
) -> dict[str, Any]:
    raise_fd_limit()
    n = profile.agents
    with tempfile.TemporaryDirectory(prefix="outlink-bench-") as tmp, child_processes() as procs:
        work = Path(tmp)
        t0 = time.perf_counter()
        pki = BenchPKI(work / "pki")
        devices = pki.issue_devices(n)
        progress(f"{n} device certificates (distinct keys) in {time.perf_counter() - t0:.1f} s")
        db_url = f"sqlite:///{work / 'outlink.db'}"
        create_database(db_url, devices)
        progress(f"database migrated, {n} devices registered")
        trace_dir = work / "traces" if trace_memory else None
        if trace_dir is not None:
            trace_dir.mkdir()
        with RelayProcess(
            work, pki, db_url, max_connections=n + 1000, trace_dir=trace_dir
        ) as relay:
            relay_proc = psutil.Process(relay.pid)
            slices = [devices[i :: profile.clients] for i in range(profile.clients)]
            for i, part in enumerate(slices):
                path = work / f"slice-{i}.json"
                path.write_text(json.dumps([(d.device_id, str(d.pem_file)) for d in part]))
                proc = await asyncio.create_subprocess_exec(
                    PYTHON,
                    __file__,
                    *("--child", "--slice", str(path), "--url", relay.url("/agent")),
                    *("--ca", str(pki.ca_file)),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=64 * 1024 * 1024,  # the final report carries every latency
                )
                procs.append(proc)
            phase_timeout = PHASE_TIMEOUT_PER_1000 * max(1, n / 1000)
            async with asyncio.timeout(phase_timeout):
                for proc in procs:
                    await read_json_line(proc)  # prepared
            progress(f"{profile.clients} client processes prepared their TLS contexts")
            rss_before = rss(relay_proc)
            traced_before = await snapshot(relay, 1) if trace_memory else None
            cpu_before_connect = cpu_seconds(relay_proc)
            profiler = Profiler(py_spy, relay.pid)
            profiler.start("connect")
            t_go = time.perf_counter()
            for proc in procs:
                await send_line(proc, "go")
            finals: list[dict[str, Any]] = []

            async def follow(proc: asyncio.subprocess.Process) -> None:
                while True:
                    message = await read_json_line(proc)
                    if message.get("ready"):
                        finals.append(message)
                        return
                    progress(f"client {proc.pid}: {message['connected']} connected")

            async with asyncio.timeout(phase_timeout):
                await asyncio.gather(*(follow(p) for p in procs))
            connect_seconds = time.perf_counter() - t_go
            profiler.stop()
            connect_cpu = cpu_seconds(relay_proc) - cpu_before_connect
            connected = sum(f["connected"] for f in finals)
            errors: dict[str, int] = {}
            for f in finals:
                for name, count in f["errors"].items():
                    errors[name] = errors.get(name, 0) + count
            latencies = [x for f in finals for x in f["latencies"]]
            progress(
                f"{connected}/{n} agents connected in {connect_seconds:.1f} s "
                f"({connected / connect_seconds:.0f}/s), errors {errors}"
            )
            if errors:
                progress(f"relay log tail:\n{relay.log_tail()}")
            if not connected:
                raise RuntimeError("no agent could connect")
            await asyncio.sleep(SETTLE)  # let the presence flush run (measurement, not sync)
            rss_after = rss(relay_proc)
            breakdown = None
            if traced_before is not None:
                breakdown = memory_breakdown(traced_before, await snapshot(relay, 2), connected)
                progress(f"tracemalloc: {json.dumps(breakdown, indent=1)}")
            before_metrics = relay.metrics()
            progress(f"relay RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB")
            progress(f"idle window of {profile.window:.0f} s")
            profiler.start("idle")
            cpu0, w0 = cpu_seconds(relay_proc), time.perf_counter()
            await asyncio.sleep(profile.window)  # the measurement window itself
            cpu1, w1 = cpu_seconds(relay_proc), time.perf_counter()
            profiler.stop()
            rss_end = rss(relay_proc)
            after_metrics = relay.metrics()
            held = int(metric(after_metrics, "outlink_relay_agents_connected"))
            for proc in procs:
                await send_line(proc, "report")
            alive = 0
            for proc in procs:
                alive += int((await read_json_line(proc))["alive"])
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.close()
            idle_cpu = 100 * (cpu1 - cpu0) / (w1 - w0)
            frames = connection_frames(after_metrics) - connection_frames(before_metrics)
            progress(f"relay holds {held} agents (clients hold {alive}); idle CPU {idle_cpu:.2f} %")
    agents = min(held, alive)
    rss_per_agent = (rss_after - rss_before) / max(1, connected) / 1024
    result = {
        "benchmark": "relay_capacity",
        "mode": mode,
        "agents_target": n,
        "agents": agents,
        "agents_connected": connected,
        "connect_errors": errors,
        "client_processes": profile.clients,
        "distinct_keys": True,
        "relay_rss_before_mib": round(rss_before / 2**20, 1),
        "relay_rss_after_mib": round(rss_after / 2**20, 1),
        "relay_rss_end_of_window_mib": round(rss_end / 2**20, 1),
        "rss_per_agent_kib": round(rss_per_agent, 1),
        "idle_window_s": round(w1 - w0, 1),
        "idle_cpu_pct": round(idle_cpu, 2),
        "keepalive_frames_in_per_s": round(frames / (w1 - w0), 1),
        "handshakes_per_s": round(connected / connect_seconds, 1),
        "connect_seconds": round(connect_seconds, 1),
        "relay_cpu_pct_while_connecting": round(100 * connect_cpu / connect_seconds, 1),
        # CPU time per unit of work: unlike rates, not skewed by other load on the machine.
        "relay_cpu_ms_per_handshake": round(1000 * connect_cpu / max(1, connected), 2),
        "relay_cpu_us_per_keepalive_frame": round(1e6 * (cpu1 - cpu0) / frames, 1)
        if frames
        else None,
        "connect_latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "connect_latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "targets": {
            "agents": n,
            "rss_per_agent_kib": TARGET_RSS_PER_AGENT_KIB,
            "idle_cpu_pct": TARGET_IDLE_CPU_PCT,
        },
        "pass": {
            "agents": agents >= n,
            "rss_per_agent_kib": rss_per_agent <= TARGET_RSS_PER_AGENT_KIB,
            "idle_cpu_pct": idle_cpu <= TARGET_IDLE_CPU_PCT,
        },
    }
    if breakdown is not None:
        # Tracing inflates every allocation: RSS and CPU figures of this run are not valid.
        result["tracemalloc"] = breakdown
        result["figures_valid"] = False
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1,000 agents, under a minute")
    size.add_argument("--full", action="store_true", help="10,000 agents, 30 s idle window")
    parser.add_argument("--agents", type=int, help="override the number of agents")
    parser.add_argument("--window", type=float, help="override the idle window (seconds)")
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="diagnosis: run the relay under tracemalloc and report where memory goes "
        "(RSS/CPU figures of such a run are not valid)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="diagnosis: py-spy record the relay while agents connect and during the idle "
        "window into DIR/relay-{connect,idle}.txt (sampling costs a little CPU)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slice", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        devices = json.loads(Path(args.slice).read_text())
        asyncio.run(run_client(args.url, Path(args.ca), devices))
        return
    mode = "quick" if args.quick else "full" if args.full else "default"
    profile = PROFILES[mode]
    if args.agents or args.window:
        profile = Profile(
            args.agents or profile.agents, profile.clients, args.window or profile.window
        )
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    emit(asyncio.run(bench(profile, mode, args.trace_memory, args.py_spy)))


if __name__ == "__main__":
    main()
