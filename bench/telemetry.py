"""Telemetry at fleet scale: ingestion rate, alarm latency, wire cost, agent cost, and
nothing lost or duplicated across a relay crash.

Everything real: each simulated agent has its own device certificate, dials the relay
over mutual TLS with the agent's `ConnectionManager`, spools into its own SQLite spool,
and sends with the agent's `Sender`; its `Poller` tails a log written by the device
simulator (`sim.device.Simulator`) and polls "system" readings (a synthetic source with
the metric names and value ranges of `agent.telemetry.collectors`, so N agents on one
machine do not all measure the same host). The relay is ``python -m
relay_server`` (the relay, telemetry attached), one process.

Phases (time compressed: one simulated minute = 60/COMPRESSION seconds):

1. **ingest** -- every agent has a backlog in its spool (a device back after an outage:
   one poll per minute plus the equipment's events); all connect at once; sustained
   ``records_per_s`` = records stored / time from the first connect to the last ack.
   Run on SQLite and again on a private PostgreSQL (``stack.testrun.private_postgres``).
2. **stream** -- polls every (compressed) minute, batches every 5 minutes, log lines
   from the simulator, urgent codes at random (each a new code, so each opens a new
   alarm). In the middle the relay is killed with SIGKILL and restarted. Then:
   ``alarm_p50_ms``/``alarm_p95_ms`` from an urgent line's timestamp in the device log
   to its alarm row's ``opened_at`` (it includes the agent's 0.5 s log tail interval;
   urgent lines written while the relay was down are left out); ``lost`` and
   ``duplicated`` compare every coded line the simulators wrote with the event rows
   (by content: a line read twice would be a second row), and every poll taken with
   the metrics rows; message sizes and ``bytes_per_record`` on the wire (payload +
   WIRE_OVERHEAD per message for tunnel, WebSocket and TLS framing).
3. **agent idle** -- a real agent process (``python -m agent run``, default
   intervals; ``--quick`` polls every 10 s so its short window still holds a poll)
   with an idle device log: CPU % of one core and RSS over the window.

Usage: ``python bench/telemetry.py [--quick] [--agents N] [--seconds S]``.
Targets: >= 5,000 records/s ingested; alarm p95 <= 1 s; agent idle <= 0.5 % of a core
and <= 80 MB RSS; lost 0 and duplicated 0 after the relay restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# This file is bench/telemetry.py: with bench/ first on sys.path, ``import telemetry``
# would find it instead of the package. The repository goes first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from harness import (
    PYTHON,
    ROOT,
    STOP_GRACE,
    BenchPKI,
    DeviceCredential,
    RelayProcess,
    child_processes,
    create_database,
    emit,
    percentile,
    progress,
    read_json_line,
    report,
)
from sqlalchemy import func, select

from agent.config import AgentConfig, BackoffConfig
from agent.connection import ConnectionManager
from agent.control import Registry
from agent.telemetry.config import DEFAULT_PATTERN, SourceConfig
from agent.telemetry.poller import Poller
from agent.telemetry.sender import Sender
from agent.telemetry.sources import (
    DeviceSource,
    LogFileSource,
    PropertiesFile,
    SourceContext,
)
from agent.telemetry.spool import Spool
from sim.device import Simulator, log_line
from store.db import make_engine, session_scope
from store.telemetry.alarms import TelemetryAlarm
from store.telemetry.events import TelemetryEvent
from store.telemetry.records import TelemetryRecord
from telemetry.records import Event, Metrics, Record, Severity
from telemetry.scrub import Scrubber
from telemetry.severity import SeverityTable

COMPRESSION = 300.0  # one simulated minute lasts 0.2 s
POLL = 60.0 / COMPRESSION
SEND = 300.0 / COMPRESSION
SIM_TICK = 2 * POLL  # the equipment logs a scan about every two minutes
URGENT_PER_TICK = 0.05
TAIL = 0.5  # the agent's real default
SEVERITY = SeverityTable({"I*": "routine", "W*": "warning", "E4*": "warning", "E9*": "urgent"})
#: Per message on the wire besides the payload: tunnel DATA header (6), WebSocket client
#: frame header with mask (8 for <64 KiB), TLS 1.3 record overhead (22).
WIRE_OVERHEAD = 36
TARGETS = {"records_per_s": 5000, "alarm_p95_ms": 1000, "agent_idle_cpu_pct": 0.5}
PHASE_TIMEOUT = 300.0


@dataclass(frozen=True)
class Profile:
    agents: int
    clients: int
    backlog: int  # records per agent in phase 1
    stream: float  # seconds of phase 2
    idle_window: float
    idle_poll: float


QUICK = Profile(agents=10, clients=2, backlog=1000, stream=14.0, idle_window=12.0, idle_poll=10.0)
FULL = Profile(agents=50, clients=2, backlog=4000, stream=60.0, idle_window=120.0, idle_poll=60.0)


# -- the relay ---------------------------------------------------------------------------


class TelemetryRelay(RelayProcess):
    """The relay with its telemetry config (``python -m relay_server --telemetry FILE``)."""

    def start(self) -> None:
        self.write_config()
        telemetry = self.workdir / "relay-telemetry.toml"
        telemetry.write_text(f'upload_dir = "{self.workdir / "uploads"}"\n')
        argv = [PYTHON, "-m", "relay_server"]
        argv += ["--config", str(self.config_file), "--telemetry", str(telemetry)]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + PHASE_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"relay not ready: {self.log_tail()}")
            time.sleep(0.05)
        progress(f"telemetry relay pid {self.pid} ready on port {self.port}")

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


# -- simulated agents (in child processes) ------------------------------------------------


class SyntheticSystem(DeviceSource):
    """What `SystemCollector` reports, with plausible values, without asking the host."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__("system")
        self.rng = rng
        self.uptime = rng.uniform(1, 2000)

    def readings(self) -> dict[str, float]:
        r = self.rng
        self.uptime += 1 / 60
        return {
            "cpu.percent": round(r.uniform(2, 60), 1),
            "cpu.load1": round(r.uniform(0.1, 3), 2),
            "mem.percent": round(r.uniform(30, 70), 1),
            "mem.available_mb": round(r.uniform(2000, 12000), 1),
            "swap.percent": round(r.uniform(0, 5), 1),
            "disk.percent:/": round(r.uniform(40, 60), 1),
            "disk.free_gb:/": round(r.uniform(50, 200), 2),
            "disk.percent:/data": round(r.uniform(60, 90), 1),
            "disk.free_gb:/data": round(r.uniform(100, 900), 2),
            "disk.read_kbps": round(r.uniform(0, 5000), 1),
            "disk.write_kbps": round(r.uniform(0, 9000), 1),
            "net.sent_kbps": round(r.uniform(0, 300), 1),
            "net.recv_kbps": round(r.uniform(0, 900), 1),
            "temp.c:coretemp": round(r.uniform(40, 75), 1),
            "temp.c:acpitz": round(r.uniform(30, 50), 1),
            "uptime.h": round(self.uptime, 2),
            "proc.up:recon-server": 1.0,
            "proc.cpu:recon-server": round(r.uniform(0, 90), 1),
            "proc.rss_mb:recon-server": round(r.uniform(400, 2400), 1),
            "proc.up:acq-daemon": 1.0,
            "proc.cpu:acq-daemon": round(r.uniform(0, 20), 1),
            "proc.rss_mb:acq-daemon": round(r.uniform(100, 300), 1),
        }


class BenchAgent:
    """One simulated device: identity files, spool, connection manager, sender, poller."""

    def __init__(
        self, device_id: str, pem_file: Path, ca_file: Path, url: str, work: Path, seed: int
    ) -> None:
        self.device_id = device_id
        self.dir = work / device_id
        identity = self.dir / "identity"
        identity.mkdir(parents=True, mode=0o700)
        key, cert = pem_file.read_text().split("-----END PRIVATE KEY-----\n")
        (identity / "device.key").write_text(key + "-----END PRIVATE KEY-----\n")
        (identity / "device.key").chmod(0o600)
        (identity / "device.pem").write_text(cert)
        (identity / "ca.pem").write_bytes(ca_file.read_bytes())
        self.rng = random.Random(seed)
        config = AgentConfig(
            relay_urls=(url,),
            ca_file=str(ca_file),
            identity_dir=str(identity),
            data_dir=str(self.dir),
            proxy="none",
            open_timeout=30.0,
            backoff=BackoffConfig(base=0.2, cap=2.0, herd_window=1.0, goaway_jitter=0.2),
        )
        self.spool = Spool(self.dir / "spool.db", max_bytes=200 * 2**20, max_age=90 * 86400.0)
        self.manager = ConnectionManager(config, Registry())
        self.sender = Sender(
            self.spool, tunnel=lambda: self.manager._tunnel, connected=self.manager.connected
        )
        self.log = self.dir / "app.log"
        self.log.write_text("")
        self.sim = Simulator(self.rng, error_rate=0.05)
        self.system = SyntheticSystem(self.rng)
        self.urgent = 0
        self.tasks: list[asyncio.Task[Any]] = []

    def backlog(self, count: int) -> int:
        """Spool `count` records of the last hours (a poll per minute, a scan every other
        minute); returns how many of them are polls."""
        now = time.time()
        records: list[Record] = []
        minute = 0
        while len(records) < count:
            ts = round(now - (count - minute) * 60.0, 3)
            records.append(Metrics(0, ts, self.system.readings()))
            if minute % 2 == 0:
                records.append(Event(0, ts, "I1001", Severity.ROUTINE, "app", "Scan started"))
            minute += 1
        self.spool.append(records[:count])
        return sum(1 for r in records[:count] if isinstance(r, Metrics))

    def connect(self) -> None:
        self.tasks.append(asyncio.create_task(self.manager.run()))
        self.tasks.append(asyncio.create_task(self.sender.run()))

    def stream(self) -> None:
        source = LogFileSource(
            SourceConfig("app", str(self.log), from_start=True),
            SourceContext(SEVERITY),
        )
        self.poller = Poller(
            spool=self.spool,
            sender=self.sender,
            collector=None,
            sources=[source, self.system],
            properties=PropertiesFile(Path(""), {"model": "CT-9000", "serial": self.device_id}),
            scrubber=Scrubber(),
            audit=None,
            poll_interval=POLL,
            send_interval=SEND,
            tail_interval=TAIL,
            properties_interval=3600.0 / COMPRESSION,
        )
        self.polling = asyncio.create_task(self.poller.run())
        self.tasks.append(self.polling)
        self.writer = asyncio.create_task(self._write())

    async def settle(self) -> None:
        """Stop the equipment, let the tailer spool every line it wrote, then stop the
        poller: the counts compared with the database are final from here on. (A fixed
        sleep here left lines unspooled, or a poll uncounted, on a loaded machine.)"""
        self.writer.cancel()
        await asyncio.gather(self.writer, return_exceptions=True)
        st = self.log.stat()
        end = f"{st.st_ino}:{st.st_size}"
        while self.spool.position("app") != end:  # noqa: ASYNC110 - moved by the tailer
            await asyncio.sleep(0.05)
        self.polling.cancel()
        await asyncio.gather(self.polling, return_exceptions=True)

    async def _write(self) -> None:
        """The equipment: a few log lines per tick, now and then an urgent code."""
        while True:
            now = datetime.now()
            lines = self.sim.lines(now)
            if self.rng.random() < URGENT_PER_TICK:
                self.urgent += 1
                code = f"E9{self.urgent:04d}"
                lines.append(log_line(now, "ERROR", "tube", code, "Tube overtemperature"))
            with open(self.log, "a") as f:  # noqa: ASYNC230 - a few hundred bytes
                f.write("".join(line + "\n" for line in lines))
            await asyncio.sleep(SIM_TICK)

    async def drained(self) -> None:
        while self.spool.stats().records:  # noqa: ASYNC110 - drained by worker threads
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.manager.stop()
        for task in self.tasks[1:]:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.spool.close()


async def child(params: dict[str, Any]) -> None:
    """A client process: holds a slice of the agents; phases on the parent's word."""
    logging.basicConfig(level=logging.ERROR)  # the relay crash is expected: no warnings
    work = Path(params["work"])
    agents = [
        BenchAgent(d, Path(pem), Path(params["ca"]), params["url"], work, seed)
        for seed, (d, pem) in enumerate(params["devices"])
    ]
    polls = await asyncio.gather(*(asyncio.to_thread(a.backlog, params["backlog"]) for a in agents))
    spooled = params["backlog"] * len(agents)
    report(
        {
            "event": "backlog",
            "records": spooled,
            "polls": {a.device_id: n for a, n in zip(agents, polls, strict=True)},
        }
    )
    lines = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)

    async def command() -> str:
        return (await lines.readline()).decode().strip()

    def totals() -> tuple[int, int, int]:
        return (
            sum(a.sender.acked for a in agents),
            sum(a.sender.bytes_sent for a in agents),
            sum(a.sender.batches_sent for a in agents),
        )

    if await command() == "go":
        t_start = time.time()
        for agent in agents:
            agent.connect()
        await asyncio.gather(*(a.drained() for a in agents))
        _, sent, messages = totals()
        report(
            {
                "event": "drained",
                "t_start": t_start,
                "t_end": time.time(),
                "records": spooled,
                "bytes": sent,
                "messages": messages,
            }
        )
    if await command() == "stream":
        acked0, sent0, messages0 = totals()
        for agent in agents:
            agent.sender.sizes.clear()
            agent.stream()
        if await command() == "quiet":
            await asyncio.gather(*(a.settle() for a in agents))
            for agent in agents:
                agent.sender.flush()
            await asyncio.gather(*(a.drained() for a in agents))
            acked, sent, messages = totals()
            report(
                {
                    "event": "streamed",
                    "sizes": [s for a in agents for s in a.sender.sizes],
                    "records": acked - acked0,
                    "bytes": sent - sent0,
                    "messages": messages - messages0,
                    "polls": {a.device_id: a.poller.polls for a in agents},
                }
            )
            await command()
    await asyncio.gather(*(a.stop() for a in agents))


# -- the parent --------------------------------------------------------------------------


async def start_children(
    work: Path,
    relay: TelemetryRelay,
    pki: BenchPKI,
    devices: list[DeviceCredential],
    profile: Profile,
    procs: list[asyncio.subprocess.Process],
) -> list[asyncio.subprocess.Process]:
    mine = []
    for i in range(profile.clients):
        part = devices[i :: profile.clients]
        params = {
            "work": str(work / f"client-{i}"),
            "ca": str(pki.ca_file),
            "url": relay.url("/agent"),
            "backlog": profile.backlog,
            "devices": [(d.device_id, str(d.pem_file)) for d in part],
        }
        proc = await asyncio.create_subprocess_exec(
            PYTHON,
            __file__,
            "--child",
            json.dumps(params),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 2**20,
            cwd=ROOT,
        )
        procs.append(proc)
        mine.append(proc)
    return mine


async def tell(procs: list[asyncio.subprocess.Process], word: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(word.encode() + b"\n")
        await proc.stdin.drain()


async def collect(procs: list[asyncio.subprocess.Process], event: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(PHASE_TIMEOUT):
        messages = [await read_json_line(p) for p in procs]
    assert all(m["event"] == event for m in messages), messages
    return messages


async def ingest_phase(
    label: str,
    work: Path,
    relay: TelemetryRelay,
    pki: BenchPKI,
    devices: list[DeviceCredential],
    profile: Profile,
    procs: list[asyncio.subprocess.Process],
) -> tuple[list[asyncio.subprocess.Process], float, dict[str, Any]]:
    children = await start_children(work, relay, pki, devices, profile, procs)
    spooled = await collect(children, "backlog")
    total = sum(m["records"] for m in spooled)
    wire_polls = {k: v for m in spooled for k, v in m["polls"].items()}
    progress(f"[{label}] {len(devices)} agents with {total} spooled records; connecting")
    await tell(children, "go")
    drained = await collect(children, "drained")
    seconds = max(m["t_end"] for m in drained) - min(m["t_start"] for m in drained)
    rate = total / seconds
    wire = {
        "bytes": sum(m["bytes"] for m in drained),
        "messages": sum(m["messages"] for m in drained),
        "records": total,
        "polls": wire_polls,
    }
    progress(f"[{label}] {total} records ingested in {seconds:.2f} s: {rate:.0f} records/s")
    return children, rate, wire


def coded_lines(log: Path) -> Counter[tuple[float, str]]:
    pattern = re.compile(DEFAULT_PATTERN)
    out: Counter[tuple[float, str]] = Counter()
    for line in log.read_text().splitlines():
        match = pattern.match(line)
        if match:
            moment = datetime.strptime(match["ts"], "%Y-%m-%d %H:%M:%S.%f")
            out[(round(moment.timestamp(), 3), match["code"])] += 1
    return out


def check_stream(
    db_url: str,
    work: Path,
    devices: list[DeviceCredential],
    since: float,
    polls: dict[str, int],
    backlog: dict[str, int],
    outage: tuple[float, float],
) -> dict[str, Any]:
    """Lost/duplicated by content, and alarm latencies, from the database."""
    engine = make_engine(db_url)
    lost = duplicated = 0
    latencies: list[float] = []
    try:
        with session_scope(engine) as session:
            for device in devices:
                logs = list(work.glob(f"client-*/{device.device_id}/app.log"))
                written = coded_lines(logs[0])
                stored: Counter[tuple[float, str]] = Counter(
                    (round(ts.timestamp(), 3), code)
                    for ts, code in session.execute(
                        select(TelemetryEvent.ts, TelemetryEvent.code).where(
                            TelemetryEvent.device_id == device.device_id,
                            TelemetryEvent.ts >= datetime.fromtimestamp(since - 1).astimezone(),
                        )
                    )
                )
                lost += sum((written - stored).values())
                duplicated += sum((stored - written).values())
                metrics = session.scalar(
                    select(func.count()).where(
                        TelemetryRecord.device_id == device.device_id,
                        TelemetryRecord.kind == "metrics",
                    )
                )
                lost += max(0, polls[device.device_id] + backlog[device.device_id] - (metrics or 0))
            for first, opened in session.execute(
                select(TelemetryAlarm.first_ts, TelemetryAlarm.opened_at).where(
                    TelemetryAlarm.key.like("code:E9%")
                )
            ):
                t = first.timestamp()
                if t >= since and not outage[0] - 1 <= t <= outage[1]:
                    latencies.append((opened - first).total_seconds() * 1000)
    finally:
        engine.dispose()
    return {"lost": lost, "duplicated": duplicated, "latencies": latencies}


def idle_agent(
    work: Path, pki: BenchPKI, device: DeviceCredential, relay: TelemetryRelay, poll: float
) -> subprocess.Popen[bytes]:
    """A real agent process with an idle device log (R32: what it costs the device)."""
    home = work / "idle-agent"
    identity = home / "identity"
    identity.mkdir(parents=True, mode=0o700)
    key, cert = device.pem_file.read_text().split("-----END PRIVATE KEY-----\n")
    (identity / "device.key").write_text(key + "-----END PRIVATE KEY-----\n")
    (identity / "device.key").chmod(0o600)
    (identity / "device.pem").write_text(cert)
    (identity / "ca.pem").write_bytes(pki.ca_file.read_bytes())
    (home / "app.log").write_text("")
    (home / "agent.toml").write_text(
        f'relay_urls = ["{relay.url("/agent")}"]\nca_file = "{pki.ca_file}"\n'
        f'identity_dir = "{identity}"\ndata_dir = "{home}"\nproxy = "none"\n'
    )
    (home / "telemetry.toml").write_text(
        f'poll_interval = {poll}\nprocesses = ["sim"]\n[[sources]]\nname = "app"\n'
        f'path = "{home / "app.log"}"\n'
    )
    with open(home / "agent.log", "ab") as log:
        return subprocess.Popen(
            [
                PYTHON,
                "-m",
                "agent",
                "run",
                "--config",
                str(home / "agent.toml"),
                "--telemetry",
                str(home / "telemetry.toml"),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def measure_idle(
    proc: subprocess.Popen[bytes], home: Path, window: float
) -> tuple[float, float]:
    status = home / "status.json"
    async with asyncio.timeout(PHASE_TIMEOUT):
        connected = False
        while not connected:  # another process's state: poll its status file
            await asyncio.sleep(0.1)
            if proc.poll() is not None:
                raise RuntimeError(f"the idle agent exited ({proc.returncode}): see {home}")
            connected = status.exists() and bool(
                json.loads(status.read_text() or "{}").get("connected")
            )
    await asyncio.sleep(3.0)  # past start-up (imports, first poll): idle from here
    p = psutil.Process(proc.pid)
    t0, c0 = time.monotonic(), sum(p.cpu_times()[:2])
    await asyncio.sleep(window)
    t1, c1 = time.monotonic(), sum(p.cpu_times()[:2])
    return 100 * (c1 - c0) / (t1 - t0), p.memory_info().rss / 2**20


def size_stats(sizes: list[int]) -> dict[str, float]:
    return {
        "p10": percentile(sizes, 0.10),
        "p50": percentile(sizes, 0.50),
        "p90": percentile(sizes, 0.90),
        "max": max(sizes) if sizes else 0,
        "messages": len(sizes),
    }


async def bench(profile: Profile) -> dict[str, Any]:
    from stack.testrun import private_postgres

    result: dict[str, Any] = {"agents": profile.agents}
    with (
        tempfile.TemporaryDirectory(prefix="outlink-bench-telemetry-") as tmp,
        child_processes() as procs,
    ):
        work = Path(tmp)
        pki = BenchPKI(work / "pki")
        devices = pki.issue_devices(profile.agents + 1)
        agents, spare = devices[:-1], devices[-1]
        db_url = f"sqlite:///{work / 'outlink.db'}"
        create_database(db_url, devices)
        progress(f"{len(devices)} devices enrolled (certificates + database)")
        relay = TelemetryRelay(work / "relay-sqlite", pki, db_url)
        relay.workdir.mkdir()
        relay.start()
        try:
            children, rate, wire = await ingest_phase(
                "sqlite", work, relay, pki, agents, profile, procs
            )
            result["records_per_s"] = result["records_per_s_sqlite"] = round(rate)
            result["ingest_bytes_per_record"] = round(
                (wire["bytes"] + WIRE_OVERHEAD * wire["messages"]) / wire["records"], 1
            )
            # -- phase 2: the stream, with a relay crash in the middle
            since = time.time()
            await tell(children, "stream")
            progress(f"[stream] {profile.stream:.0f} s, relay killed half-way")
            await asyncio.sleep(profile.stream / 2)
            t_kill = time.time()
            relay.crash()
            progress("[stream] relay killed (SIGKILL)")
            await asyncio.sleep(1.0)
            relay.start()
            t_back = time.time() + 2.0  # agents redial within their herd window
            await asyncio.sleep(profile.stream / 2)
            await tell(children, "quiet")
            streamed = await collect(children, "streamed")
            polls = {k: v for m in streamed for k, v in m["polls"].items()}
            backlog = wire["polls"]
            checked = check_stream(db_url, work, agents, since, polls, backlog, (t_kill, t_back))
            latencies = checked["latencies"]
            sizes = [s for m in streamed for s in m["sizes"]]
            records = sum(m["records"] for m in streamed)
            payload = sum(m["bytes"] for m in streamed)
            messages = sum(m["messages"] for m in streamed)
            result.update(
                lost=checked["lost"],
                duplicated=checked["duplicated"],
                alarm_p50_ms=round(percentile(latencies, 0.5), 1),
                alarm_p95_ms=round(percentile(latencies, 0.95), 1),
                alarms_measured=len(latencies),
                stream_records=records,
                bytes_per_record=round((payload + WIRE_OVERHEAD * messages) / max(records, 1), 1),
                payload_bytes_per_record=round(payload / max(records, 1), 1),
                message_bytes=size_stats(sizes),
            )
            progress(
                f"[stream] {records} records, lost {checked['lost']}, duplicated "
                f"{checked['duplicated']}, alarm p50/p95 {result['alarm_p50_ms']}/"
                f"{result['alarm_p95_ms']} ms over {len(latencies)} alarms, "
                f"{result['bytes_per_record']} B/record, messages {result['message_bytes']}"
            )
            await tell(children, "stop")
            for proc in children:
                await asyncio.wait_for(proc.wait(), PHASE_TIMEOUT)
            # -- phase 3 (PostgreSQL ingest) with the idle agent measured meanwhile
            agent = idle_agent(work, pki, spare, relay, profile.idle_poll)
            try:
                idle = asyncio.create_task(
                    measure_idle(agent, work / "idle-agent", profile.idle_window)
                )
                with private_postgres() as pg_url:
                    if pg_url is None:
                        progress("[postgresql] not installed: skipped")
                        result["records_per_s_postgresql"] = None
                    else:
                        create_database(pg_url, agents)
                        pg_relay = TelemetryRelay(work / "relay-pg", pki, pg_url)
                        pg_relay.workdir.mkdir()
                        pg_relay.start()
                        try:
                            pg_children, pg_rate, _ = await ingest_phase(
                                "postgresql", work / "pg", pg_relay, pki, agents, profile, procs
                            )
                            result["records_per_s_postgresql"] = round(pg_rate)
                            await tell(pg_children, "stop")
                            for proc in pg_children:
                                await asyncio.wait_for(proc.wait(), PHASE_TIMEOUT)
                        finally:
                            pg_relay.stop()
                cpu, rss = await idle
                result["agent_idle_cpu_pct"] = round(cpu, 3)
                result["agent_rss_mb"] = round(rss, 1)
                result["agent_idle_window_s"] = profile.idle_window
                progress(f"[agent] idle CPU {cpu:.3f} % of a core, RSS {rss:.1f} MB")
            finally:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    agent.kill()
        finally:
            relay.stop()
    result["targets_met"] = bool(
        result["records_per_s"] >= TARGETS["records_per_s"]
        and result["alarm_p95_ms"] <= TARGETS["alarm_p95_ms"]
        and result["agent_idle_cpu_pct"] <= TARGETS["agent_idle_cpu_pct"]
        and result["agent_rss_mb"] <= 80
        and result["lost"] == 0
        and result["duplicated"] == 0
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 agents, under a minute")
    parser.add_argument("--agents", type=int, help="override the number of agents")
    parser.add_argument("--seconds", type=float, help="override the stream duration")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(child(json.loads(args.child)))
        return
    profile = QUICK if args.quick else FULL
    if args.agents:
        profile = Profile(**{**profile.__dict__, "agents": args.agents})
    if args.seconds:
        profile = Profile(**{**profile.__dict__, "stream": args.seconds})
    emit(asyncio.run(bench(profile)))


if __name__ == "__main__":
    main()
