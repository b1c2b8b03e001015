"""OpenSSL's own memory per server-side TLS connection: the floor under relay RSS/agent.

In one process, ``--connections`` TLS handshakes are run through memory BIOs
(no sockets, no asyncio, no websockets) with the relay's server context
(``pki.tls.server_context``) and an agent's client context with a device certificate
from ``pki/``; the server ends are kept, the client ends dropped. RSS growth / N is what
OpenSSL (plus the tiny ``ssl.SSLObject`` and two ``MemoryBIO`` wrappers) costs per
connection, before any Python-level relay state. ``--no-client-cert`` shows how much of
it is the verified client certificate the server keeps.

Usage: ``python bench/tls_memory.py [--quick] [--no-client-cert]``; JSON on the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import ssl
import tempfile
from pathlib import Path

import psutil
from harness import BenchPKI, emit, progress

HANDSHAKE_ROUNDS = 10  # flights needed at most (TLS 1.3 mutual auth needs 3)


def _move(source: ssl.MemoryBIO, sink: ssl.MemoryBIO) -> bool:
    data = source.read()
    if data:
        sink.write(data)
    return bool(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 connections")
    parser.add_argument("--connections", type=int, help="default 5,000")
    parser.add_argument("--no-client-cert", action="store_true")
    args = parser.parse_args()
    n = args.connections or (1000 if args.quick else 5000)
    proc = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="outlink-bench-") as tmp:
        pki = BenchPKI(Path(tmp) / "pki")
        (device,) = pki.issue_devices(1)
        server = pki.server_context()
        client = (
            ssl.create_default_context(cafile=str(pki.ca_file))
            if args.no_client_cert
            else pki.client_context(device.pem_file)
        )
        kept = []
        gc.collect()
        before = proc.memory_info().rss
        for _ in range(n):
            s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
            s = server.wrap_bio(s_in, s_out, server_side=True)
            c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
            for _ in range(HANDSHAKE_ROUNDS):
                for end in (c, s):
                    with contextlib.suppress(ssl.SSLWantReadError):  # the peer's turn
                        end.do_handshake()
                if not (_move(c_out, s_in) | _move(s_out, c_in)):
                    break
            kept.append((s, s_in, s_out))
        gc.collect()
        after = proc.memory_info().rss
        version = kept[0][0].version()
        progress(f"{n} server-side TLS connections ({version}) kept")
    emit(
        {
            "benchmark": "tls_memory",
            "connections": n,
            "tls_version": version,
            "client_cert": not args.no_client_cert,
            "openssl": ssl.OPENSSL_VERSION,
            "kib_per_connection": round((after - before) / n / 1024, 1),
        }
    )


if __name__ == "__main__":
    main()
