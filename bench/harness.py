"""What every benchmark needs: a fleet PKI, a migrated database, the real relay process.

Benchmarks run the real parts: certificates issued by ``pki/``, a SQLite database
migrated by ``store.db.upgrade``, and the relay started by its CLI
(``python -m relay_server --config FILE``) as a separate process with a TOML config,
all in one temporary directory and on 127.0.0.1. Every process a benchmark starts is
stopped in a ``finally`` block, so an interrupted run leaves nothing behind.

Conventions: progress goes to stderr (:func:`progress`); the figures are ONE JSON
object on the last line of stdout (:func:`emit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/NAME.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from pki.ca import CA_CERT_FILE, init_ca  # noqa: E402
from pki.fleet import ensure_site  # noqa: E402
from pki.issue import issue_device_cert, issue_server_cert, issue_service_cert  # noqa: E402
from pki.keys import generate_key, private_key_pem  # noqa: E402
from pki.serials import serial_hex  # noqa: E402
from pki.tls import client_context, server_context  # noqa: E402
from protocol.ids import DeviceId, new_device_id  # noqa: E402
from store.db import make_engine, session_scope, upgrade  # noqa: E402
from store.models import Certificate, Device  # noqa: E402

PYTHON = sys.executable
HOST = "127.0.0.1"
CUSTOMER = "bench"
SITE = "lab"
SERVICE_NAME = "bench"

# How long the relay may take to answer /readyz after start (imports, migrations
# checked, revocation cache loaded). Generous: a loaded 2-core machine is slow.
RELAY_READY_TIMEOUT = 30.0
# SIGTERM first (graceful shutdown: GOAWAY to every agent), SIGKILL after this.
STOP_GRACE = 10.0

_T0 = time.monotonic()
_LOAD_AT_START = os.getloadavg()[0]


def progress(message: str) -> None:
    """A human-readable progress line on stderr (stdout is for the JSON result)."""
    print(f"[{time.monotonic() - _T0:7.2f}s] {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's figures as one JSON object: the last line of stdout.

    ``machine`` says how busy the machine was (1-minute load average at start and end,
    our own processes included): figures from a loaded 2-core machine are not comparable.
    """
    result["machine"] = {
        "cpus": os.cpu_count(),
        "load_avg_1m_start": round(_LOAD_AT_START, 2),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, sort_keys=True), flush=True)


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (thousands of sockets per process)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; what p50/p99 mean here."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    """A device's certificate and key in one PEM file (``load_cert_chain`` reads both)."""

    device_id: DeviceId
    pem_file: Path
    serial: str
    not_before: datetime
    not_after: datetime


class BenchPKI:
    """A fleet CA in ``directory`` plus the relay, service and device certificates.

    Files are written without fsync: they live in a throwaway temp directory.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ca, _ = init_ca(directory / "ca")
        self.ca_file = directory / "ca" / CA_CERT_FILE
        server = issue_server_cert(self.ca, dns_names=("localhost",), ip_addresses=(HOST,))
        self.server_cert = directory / "relay.pem"
        self.server_key = directory / "relay.key"
        self.server_cert.write_bytes(server.cert_pem)
        _write_secret(self.server_key, private_key_pem(server.key))
        service = issue_service_cert(self.ca, SERVICE_NAME)
        self.service_file = directory / "service.pem"
        _write_secret(self.service_file, private_key_pem(service.key) + service.cert_pem)
        self._devices = directory / "devices"
        self._devices.mkdir(exist_ok=True)

    def issue_devices(self, count: int) -> list[DeviceCredential]:
        """``count`` device certificates, each with its OWN fresh P-256 key and device id."""
        creds = []
        for _ in range(count):
            device_id = new_device_id()
            key = generate_key()
            cert = issue_device_cert(
                self.ca, key.public_key(), device_id=device_id, customer=CUSTOMER, site=SITE
            )
            pem_file = self._devices / f"{device_id}.pem"
            _write_secret(
                pem_file, private_key_pem(key) + cert.public_bytes(serialization.Encoding.PEM)
            )
            creds.append(
                DeviceCredential(
                    device_id,
                    pem_file,
                    serial_hex(cert.serial_number),
                    cert.not_valid_before_utc,
                    cert.not_valid_after_utc,
                )
            )
        return creds

    def server_context(self) -> ssl.SSLContext:
        """The relay's own TLS settings (pki.tls.server_context), for the baseline server."""
        return server_context(self.server_cert, self.server_key, self.ca_file)

    def client_context(self, pem_file: Path) -> ssl.SSLContext:
        return client_tls(self.ca_file, pem_file)


def client_tls(ca_file: Path, pem_file: Path) -> ssl.SSLContext:
    """An agent's/service's TLS settings (pki.tls.client_context): pinned fleet CA,
    hostname checked, the client certificate and key from one PEM file."""
    return client_context(ca_file, pem_file)


def create_database(db_url: str, devices: Sequence[DeviceCredential]) -> None:
    """Migrate a fresh database and register the devices and their certificates, so the
    relay sees enrolled devices (presence rows need a ``devices`` row)."""
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        now = datetime.now(UTC)
        with session_scope(engine) as session:
            site = ensure_site(session, CUSTOMER, SITE)
            customer_id, site_id = site.customer_id, site.id
            if devices:
                session.execute(
                    insert(Device),
                    [
                        {
                            "id": d.device_id,
                            "customer_id": customer_id,
                            "site_id": site_id,
                            "enrolled_at": now,
                        }
                        for d in devices
                    ],
                )
                session.execute(
                    insert(Certificate),
                    [
                        {
                            "serial": d.serial,
                            "device_id": d.device_id,
                            "kind": "device",
                            "subject": f"CN={d.device_id}",
                            "not_before": d.not_before,
                            "not_after": d.not_after,
                            "issued_at": now,
                        }
                        for d in devices
                    ],
                )
    finally:
        engine.dispose()


class RelayProcess:
    """The real relay, started by its CLI with a TOML config, as a child process.

    Per-source admission limits are off by default here: every simulated agent comes
    from 127.0.0.1, which the relay would otherwise (rightly) treat as one abusive NAT.
    """

    def __init__(
        self,
        workdir: Path,
        pki: BenchPKI,
        db_url: str,
        *,
        log_level: str = "INFO",
        max_connections: int = 20000,
        trace_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.pki = pki
        self.db_url = db_url
        self.port = free_port()
        self.ops_port = free_port()
        self.config_file = workdir / "relay.toml"
        self.log_file = workdir / "relay.log"
        self.log_level = log_level
        self.max_connections = max_connections
        self.trace_dir = trace_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"wss://{HOST}:{self.port}{path}"

    def write_config(self) -> None:
        self.config_file.write_text(
            f"""relay_id = "bench"
db_url = "{self.db_url}"

[listen]
host = "{HOST}"
port = {self.port}

[ops]
host = "{HOST}"
port = {self.ops_port}

[tls]
cert = "{self.pki.server_cert}"
key = "{self.pki.server_key}"
ca = "{self.pki.ca_file}"
ca_dir = "{self.pki.ca_file.parent}"

[limits]
max_connections_per_source = 0
connect_rate_per_source = 0.0
max_connections = {self.max_connections}

[log]
level = "{self.log_level}"
format = "json"
"""
        )

    def start(self) -> None:
        """Start the relay and return once /readyz answers 200."""
        self.write_config()
        argv = [PYTHON, "-m", "relay_server", "--config", str(self.config_file)]
        env = dict(os.environ)
        if self.trace_dir is not None:  # the same CLI under tracemalloc (diagnosis only)
            argv[1:3] = [str(Path(__file__).with_name("traced_relay.py"))]
            env["OUTLINK_BENCH_TRACE_DIR"] = str(self.trace_dir)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + RELAY_READY_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"relay not ready in {RELAY_READY_TIMEOUT} s: {self.log_tail()}")
            time.sleep(0.05)
        progress(f"relay pid {self.pid} ready on {HOST}:{self.port}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.ops_port}/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> str:
        """The relay's Prometheus text (ops listener)."""
        with urllib.request.urlopen(f"http://{HOST}:{self.ops_port}/metrics", timeout=10) as resp:
            text: str = resp.read().decode()
            return text

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL if it lingers. Safe to call twice."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> RelayProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def child_processes() -> Iterator[list[asyncio.subprocess.Process]]:
    """A list to put started child processes in; every one still running is killed
    on exit, whatever happened."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()


async def read_json_line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    """The next JSON line a child wrote on stdout (children report that way)."""
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"child {proc.pid} exited (code {await proc.wait()})")
    message: dict[str, Any] = json.loads(line)
    return message


def report(message: dict[str, Any]) -> None:
    """A child's report to its parent: one JSON line on stdout."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
