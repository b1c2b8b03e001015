"""Throughput and priority latency through the real relay, against a plain-websockets baseline.

Path measured: agent -> relay -> service client, all real: mutual TLS with certificates
from ``pki/``, the relay started by its CLI (``python -m relay_server``) as a separate
process, a tunnel client on ``/agent`` with a device certificate (hello on its control
channel, like the agent), and a ``ServiceClient`` on ``/service`` with a service
certificate that opens ``bridge`` channels to the device and reads.

Processes (the same for ours and the baseline): relay in its own process, the SENDER
(agent, or the baseline sender) in a child process, the READER in this process. Our relay
sets glibc's malloc thresholds at start (``relay_server.allocator``), as the real one does;
the agent, the baseline's relay and its sender run stock. The reader process, shared by
both, is tuned too.

1. Throughput, per message size (1 KiB, 256 KiB): the agent accepts a bridged ``files``
   channel (BULK priority) and sends messages as fast as the channel allows for a fixed
   time, then half-closes; the reader counts message bytes after a warm-up. Baseline:
   ``bench/passthrough_relay.py`` (plain websockets, same TLS) forwards each message of
   the sender's WebSocket to the reader's (``await send``). ``ratio`` = ours/baseline,
   the MINIMUM over sizes (each size's ratio and the geometric mean are reported too).
   Each round runs both back to back (ABBA order); a size's ratio is the median of its
   rounds' ratios, its bytes/s the median runs: robust against other load on the machine.
2. Round trip of a small message on an ``input`` bridge (INPUT priority, the highest a
   bridge may have: ``control``/``rpc`` are the relay's own) echoed by the agent, with no
   load and while a ``files`` bridge on the same tunnels is saturated with 256 KiB
   messages. Baseline contrast: the same echo on the baseline's single WebSocket, behind
   its bulk messages (head-of-line blocking).

Usage: ``python bench/tunnel_throughput.py [--quick|--full]``; the JSON result is the
last line of stdout. Targets: ratio >= 0.8, control_p99_ms <= 20.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from harness import (
    PYTHON,
    BenchPKI,
    RelayProcess,
    child_processes,
    client_tls,
    create_database,
    emit,
    free_port,
    percentile,
    progress,
    read_json_line,
    report,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from agent.control import ControlChannel, Registry
from protocol.aio.client import ServiceClient
from relay_server.allocator import tune_allocator
from tunnel import SUBPROTOCOLS, Role
from tunnel.aio import Channel, ChannelError, IncomingChannel, Tunnel, websocket_options
from tunnel.limits import MAX_CHUNK

HERE = Path(__file__).resolve().parent
SIZES = (1024, 256 * 1024)
BULK_SIZE = 256 * 1024  # the load behind which the control round trip is measured
BULK_KIND = "files"  # priority_for_kind -> BULK
CONTROL_KIND = "input"  # priority_for_kind -> INPUT, the highest a bridge can get
PING = struct.Struct("!BQ")  # baseline echo message: marker byte + sequence number
PING_MARK = 2  # bulk messages are zeros, so a first byte of 2 marks an echo
LOAD_BEFORE_SAMPLING = 8 * 1024 * 1024  # bulk bytes read before RTT sampling starts
SAMPLE_INTERVAL = 0.002  # pause between round trips: sample, not flood
BASELINE_MAX_SIZE = 1024 * 1024 + 64
CHILD_READY_TIMEOUT = 30.0
TARGET_RATIO = 0.8
TARGET_CONTROL_P99_MS = 20.0


@dataclass(frozen=True)
class Profile:
    seconds: float  # per throughput run
    rounds: int  # paired runs (ours, baseline) per size; the median ratio counts
    samples: int  # round trips per latency measurement...
    rtt_seconds: float  # ...unless this much time has passed (the baseline's are slow)


PROFILES = {
    "quick": Profile(seconds=1.0, rounds=3, samples=300, rtt_seconds=5.0),
    "default": Profile(seconds=3.0, rounds=5, samples=1000, rtt_seconds=20.0),
    "full": Profile(seconds=5.0, rounds=7, samples=3000, rtt_seconds=60.0),
}


# -- the sending side (a child process) ------------------------------------------------


async def send_bulk(request: IncomingChannel) -> None:
    """Send ``size``-byte messages as fast as the channel allows until ``seconds`` pass
    (then half-close) or the reader resets the channel."""
    channel = request.accept()
    size, seconds = int(request.meta["size"]), float(request.meta["seconds"])
    payload = bytes(size)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            await channel.send(payload)
        await channel.close()
    except ChannelError:
        pass


async def echo(request: IncomingChannel) -> None:
    channel = request.accept()
    try:
        async for message in channel:
            await channel.send(message)
        await channel.close()
    except ChannelError:
        pass


async def wait_stdin_closed() -> None:
    """Children live until the parent closes their stdin (or kills them)."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def run_agent(args: argparse.Namespace) -> None:
    """A tunnel client on /agent, like the agent: control channel with hello first."""
    pki_ssl = client_tls(Path(args.ca), Path(args.cert))
    registry = Registry()
    registry.add_channel(BULK_KIND, send_bulk)
    registry.add_channel(CONTROL_KIND, echo)

    async def on_open(request: IncomingChannel) -> None:
        handler = registry.channels.get(request.kind)
        if handler is not None:
            await handler(request)

    ws = await connect(
        args.url,
        ssl=pki_ssl,
        subprotocols=[Subprotocol(p) for p in SUBPROTOCOLS],
        **websocket_options(),
    )
    tunnel = Tunnel(ws, role=Role.CLIENT, on_open=on_open, name=args.name)
    runner = asyncio.create_task(tunnel.run())
    control = ControlChannel(await tunnel.open_channel("control"), registry)
    reader = asyncio.create_task(control.run())
    await control.request("hello", version="bench", capabilities=registry.capabilities)
    report({"ready": True})
    await wait_stdin_closed()
    await tunnel.close()
    await asyncio.gather(runner, reader, return_exceptions=True)


async def run_baseline_sender(args: argparse.Namespace) -> None:
    """The baseline's sender: bulk on command, echo of every binary message, one WebSocket."""
    ws = await connect(
        args.url,
        ssl=client_tls(Path(args.ca), Path(args.cert)),
        compression=None,
        ping_interval=None,
        max_size=BASELINE_MAX_SIZE,
    )
    stop = asyncio.Event()

    async def bulk(size: int, seconds: float) -> None:
        payload = bytes(size)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end and not stop.is_set():
            await ws.send(payload)
        await ws.send("done")

    report({"ready": True})
    tasks: set[asyncio.Task[None]] = set()
    stdin = asyncio.create_task(wait_stdin_closed())
    try:
        async for message in ws:
            if isinstance(message, str):
                command = json.loads(message)
                if command["op"] == "bulk":
                    stop.clear()
                    task = asyncio.create_task(bulk(command["size"], command["seconds"]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif command["op"] == "stop":
                    stop.set()
            else:
                await ws.send(message)  # the echo queues behind the bulk: one WebSocket
    except ConnectionClosed:
        pass
    stdin.cancel()


# -- the reading side (this process) ---------------------------------------------------


class Meter:
    """Message bytes counted after a warm-up, for a rate over the measured part only."""

    def __init__(self, warmup: float) -> None:
        self.warmup = warmup
        self.total = 0
        self.first: float | None = None
        self.start: float | None = None
        self.counted = 0
        self.last = 0.0
        self.loaded = asyncio.Event()

    def add(self, nbytes: int) -> None:
        now = time.perf_counter()
        self.last = now
        self.total += nbytes
        if self.first is None:
            self.first = now
        if self.start is None:
            if now - self.first >= self.warmup:
                self.start = now
        else:
            self.counted += nbytes
        if self.total >= LOAD_BEFORE_SAMPLING:
            self.loaded.set()

    def rate(self) -> float:
        if self.start is None or self.last <= self.start:
            return 0.0
        return self.counted / (self.last - self.start)


class CpuWatch:
    """CPU % of one core used by each process between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._before: dict[str, float] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._before = {n: _cpu(p) for n, p in self._procs.items()}

    def stop(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._t0
        return {
            n: round(100 * (_cpu(p) - self._before[n]) / elapsed, 1) for n, p in self._procs.items()
        }


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def ours_throughput(client: ServiceClient, device: str, size: int, seconds: float) -> float:
    meter = Meter(warmup=seconds * 0.1)
    channel = await client.open_bridge(device, BULK_KIND, {"size": size, "seconds": seconds})
    async for message in channel:
        meter.add(len(message))
    await channel.close()
    return meter.rate()


class BaselineReader:
    """The reader's end of the baseline pair: bulk bytes counted, echoes matched."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.meter = Meter(0.0)
        self.done = asyncio.Event()
        self.pongs: dict[int, asyncio.Future[None]] = {}
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    self.done.set()
                elif message[0] == PING_MARK:
                    _, seq = PING.unpack(message)
                    future = self.pongs.pop(seq, None)
                    if future is not None:
                        future.set_result(None)
                else:
                    self.meter.add(len(message))
        except ConnectionClosed:
            pass

    async def bulk(self, size: int, seconds: float) -> None:
        self.done.clear()
        await self.ws.send(json.dumps({"op": "bulk", "size": size, "seconds": seconds}))

    async def stop_bulk(self) -> None:
        await self.ws.send(json.dumps({"op": "stop"}))
        await self.done.wait()

    async def throughput(self, size: int, seconds: float) -> float:
        self.meter = Meter(warmup=seconds * 0.1)
        await self.bulk(size, seconds)
        await self.done.wait()
        return self.meter.rate()

    async def round_trip(self, seq: int) -> None:
        future = asyncio.get_running_loop().create_future()
        self.pongs[seq] = future
        await self.ws.send(PING.pack(PING_MARK, seq))
        await future


async def sample_rtts(
    probe: Callable[[int], Awaitable[None]], samples: int, max_seconds: float
) -> list[float]:
    """Up to ``samples`` sequential round trips (ms) in ``max_seconds``, paced by
    SAMPLE_INTERVAL."""
    rtts: list[float] = []
    deadline = time.perf_counter() + max_seconds
    for seq in range(samples):
        if rtts and time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        await probe(seq)
        rtts.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(SAMPLE_INTERVAL)
    return rtts


def summary(rtts: list[float]) -> dict[str, float]:
    return {
        "samples": len(rtts),
        "p50_ms": round(percentile(rtts, 0.50), 3),
        "p99_ms": round(percentile(rtts, 0.99), 3),
        "max_ms": round(max(rtts), 3),
    }


async def ours_rtt(
    client: ServiceClient, device: str, profile: Profile, loaded: bool
) -> dict[str, Any]:
    control = await client.open_bridge(device, CONTROL_KIND, {})

    async def probe(seq: int) -> None:
        await control.send(struct.pack("!Q", seq))
        if await control.recv() != struct.pack("!Q", seq):
            raise RuntimeError("echo mismatch")

    bulk: Channel | None = None
    drain: asyncio.Task[None] | None = None
    meter = Meter(0.0)
    if loaded:
        bulk = await client.open_bridge(device, BULK_KIND, {"size": BULK_SIZE, "seconds": 3600})

        async def read_bulk() -> None:
            assert bulk is not None
            async for message in bulk:
                meter.add(len(message))

        drain = asyncio.create_task(read_bulk())
        await meter.loaded.wait()
    t0 = time.perf_counter()
    counted0 = meter.total
    rtts = await sample_rtts(probe, profile.samples, profile.rtt_seconds)
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = summary(rtts)
    if bulk is not None and drain is not None:
        result["bulk_bytes_per_s"] = round((meter.total - counted0) / elapsed)
        bulk.reset()
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
    await control.close()
    return result


async def baseline_rtt(reader: BaselineReader, profile: Profile, loaded: bool) -> dict[str, Any]:
    reader.meter = Meter(0.0)
    if loaded:
        await reader.bulk(BULK_SIZE, 3600)
        await reader.meter.loaded.wait()
    t0 = time.perf_counter()
    counted0 = reader.meter.total
    rtts = await sample_rtts(reader.round_trip, profile.samples, profile.rtt_seconds)
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = summary(rtts)
    if loaded:
        result["bulk_bytes_per_s"] = round((reader.meter.total - counted0) / elapsed)
        await reader.stop_bulk()
    return result


async def start_child(
    procs: list[asyncio.subprocess.Process], *argv: str, what: str
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    procs.append(proc)
    async with asyncio.timeout(CHILD_READY_TIMEOUT):
        message = await read_json_line(proc)
    if not message.get("ready"):
        raise RuntimeError(f"{what} did not start: {message}")
    progress(f"{what} pid {proc.pid} ready")
    return proc


async def stop_child(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def bench(profile: Profile, mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="outlink-bench-") as tmp, child_processes() as procs:
        work = Path(tmp)
        pki = BenchPKI(work / "pki")
        (device,) = pki.issue_devices(1)
        db_url = f"sqlite:///{work / 'outlink.db'}"
        create_database(db_url, [device])
        with RelayProcess(work, pki, db_url, log_level="WARNING") as relay:
            base_port = free_port()
            base_relay = await start_child(
                procs,
                str(HERE / "passthrough_relay.py"),
                *("--port", str(base_port), "--cert", str(pki.server_cert)),
                *("--key", str(pki.server_key), "--ca", str(pki.ca_file)),
                what="baseline relay",
            )
            common = ("--ca", str(pki.ca_file), "--cert", str(device.pem_file))
            agent = await start_child(
                procs,
                __file__,
                *("--child", "agent", "--url", relay.url("/agent")),
                *("--name", device.device_id, *common),
                what="agent",
            )
            base_url = f"wss://127.0.0.1:{base_port}/?pair=bench"
            sender = await start_child(
                procs,
                __file__,
                *("--child", "baseline-sender", "--url", base_url, *common),
                what="baseline sender",
            )
            service_ssl = pki.client_context(pki.service_file)
            client = await ServiceClient.connect(relay.url("/service"), service_ssl, name="bench")
            base_ws = await connect(
                base_url,
                ssl=service_ssl,
                compression=None,
                ping_interval=None,
                max_size=BASELINE_MAX_SIZE,
            )
            reader = BaselineReader(base_ws)
            me = psutil.Process().pid
            ours_cpu = CpuWatch({"relay": relay.pid, "sender": agent.pid, "reader": me})
            base_cpu = CpuWatch({"relay": base_relay.pid, "sender": sender.pid, "reader": me})
            try:

                async def throughput(system: str, size: int) -> float:
                    if system == "ours":
                        return await ours_throughput(
                            client, device.device_id, size, profile.seconds
                        )
                    return await reader.throughput(size, profile.seconds)

                sizes: dict[str, Any] = {}
                for size in SIZES:
                    runs: dict[str, list[tuple[float, dict[str, float]]]] = {
                        "ours": [],
                        "baseline": [],
                    }
                    for round_no in range(profile.rounds):
                        # ABBA order: a load that drifts during the round hits both alike.
                        order = ("ours", "baseline") if round_no % 2 == 0 else ("baseline", "ours")
                        for system in order:
                            cpu = ours_cpu if system == "ours" else base_cpu
                            cpu.start()
                            rate = await throughput(system, size)
                            usage = cpu.stop()
                            runs[system].append((rate, usage))
                            progress(
                                f"{system:8} {size:>7} B messages, round {round_no + 1}: "
                                f"{rate / 1e6:8.1f} MB/s  cpu% {usage}"
                            )
                    pair_ratios = [
                        o[0] / b[0] for o, b in zip(runs["ours"], runs["baseline"], strict=True)
                    ]
                    ours = sorted(runs["ours"], key=lambda r: r[0])[len(runs["ours"]) // 2]
                    base = sorted(runs["baseline"], key=lambda r: r[0])[len(runs["baseline"]) // 2]
                    sizes[str(size)] = {
                        "ours_bytes_per_s": round(ours[0]),
                        "baseline_bytes_per_s": round(base[0]),
                        "ratio": round(statistics.median(pair_ratios), 3),
                        "round_ratios": [round(r, 3) for r in pair_ratios],
                        "ours_cpu_pct": ours[1],
                        "baseline_cpu_pct": base[1],
                    }
                ratios = [s["ratio"] for s in sizes.values()]
                # The tunnel cuts every message into MAX_CHUNK frames: the baseline with
                # messages of that size shows what per-frame costs alone allow.
                chunk_rate = await reader.throughput(MAX_CHUNK, profile.seconds)
                progress(f"baseline {MAX_CHUNK:>7} B messages: {chunk_rate / 1e6:8.1f} MB/s")
                progress("round trips: ours idle")
                idle = await ours_rtt(client, device.device_id, profile, loaded=False)
                progress(f"  {idle}; ours under bulk load")
                ours_cpu.start()
                loaded = await ours_rtt(client, device.device_id, profile, loaded=True)
                loaded["cpu_pct"] = ours_cpu.stop()
                progress(f"  {loaded}; baseline idle")
                base_idle = await baseline_rtt(reader, profile, loaded=False)
                progress(f"  {base_idle}; baseline behind bulk (head-of-line)")
                base_cpu.start()
                base_loaded = await baseline_rtt(reader, profile, loaded=True)
                base_loaded["cpu_pct"] = base_cpu.stop()
                progress(f"  {base_loaded}")
            finally:
                await base_ws.close()
                await client.close()
                for proc in (agent, sender, base_relay):
                    await stop_child(proc)
    return {
        "benchmark": "tunnel_throughput",
        "mode": mode,
        "seconds_per_run": profile.seconds,
        "rounds": profile.rounds,
        "sizes": sizes,
        "ratio": min(ratios),
        "ratio_method": "min over message sizes of the median over rounds of ours/baseline "
        "(each round: one run of each, back to back)",
        "ratio_geomean": round(math.prod(ratios) ** (1 / len(ratios)), 3),
        "baseline_max_chunk_bytes_per_s": round(chunk_rate),
        "control_kind": CONTROL_KIND,
        "bulk_kind": BULK_KIND,
        "bulk_message_bytes": BULK_SIZE,
        "control_p50_ms": loaded["p50_ms"],
        "control_p99_ms": loaded["p99_ms"],
        "control_under_load": loaded,
        "control_idle": idle,
        "baseline_hol_p50_ms": base_loaded["p50_ms"],
        "baseline_hol_p99_ms": base_loaded["p99_ms"],
        "baseline_under_load": base_loaded,
        "baseline_idle": base_idle,
        "targets": {"ratio": TARGET_RATIO, "control_p99_ms": TARGET_CONTROL_P99_MS},
        "pass": {
            "ratio": min(ratios) >= TARGET_RATIO,
            "control_p99_ms": loaded["p99_ms"] <= TARGET_CONTROL_P99_MS,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="under a minute")
    size.add_argument("--full", action="store_true", help="longer runs, more rounds and samples")
    parser.add_argument("--child", choices=("agent", "baseline-sender"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "agent":
        asyncio.run(run_agent(args))
    elif args.child == "baseline-sender":
        asyncio.run(run_baseline_sender(args))
    else:
        # The reader process serves both systems' readers: tuned like our relay, it
        # helps the baseline's reader as much as ours.
        tune_allocator()
        mode = "quick" if args.quick else "full" if args.full else "default"
        emit(asyncio.run(bench(PROFILES[mode], mode)))


if __name__ == "__main__":
    main()
