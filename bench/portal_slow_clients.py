"""Portal under slow and idle clients: nginx in front (ours) vs gunicorn alone (the peer).

Issue 14 section 2, decision 0014. For each design, in the same run: a portal served
by ``python -m web serve`` (``front = "nginx"``, then ``front = "gunicorn"``, the setup
before 0014: gthread workers terminating TLS; one worker of 4 threads each, as
``tests/web/served.py`` configures), seeded with a small fleet, is attacked by
1,000 idle TCP sockets (no TLS handshake) and 200 slowloris connections (TLS, then a
header byte every 0.5 s) -- ``tests/slow_clients.py``, the same attack as
``tests/web/test_slow_clients.py``. While the attack holds, a staff member repeats
sign-in page, sign-in, device page on new connections; each request is timed (a failure
or a timeout counts as ``--timeout`` seconds). ``--quick``: 100 + 20 attackers, 8 s.

JSON (last line): ``nginx_p50_ms``/``nginx_p95_ms`` and ``gunicorn_p50_ms``/
``gunicorn_p95_ms``, with request and failure counts and the attack sockets reached.
Target (ours): p95 <= 1000 ms, no failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import emit, progress, raise_fd_limit

from tests.slow_clients import Attack, Timings, measure, portal_user
from tests.web.served import ENGINEER_PASSWORD, serve_portal

#: acme-ct-00, in the engineer's scope (tests.web.served.seed_fleet).
DEVICE = "00000000-0000-4000-8000-000000000000"
#: The portal's ``front`` settings compared: ours, then the peer.
DESIGNS = ("nginx", "gunicorn")


def run(front: str, idle: int, slow: int, duration: float, timeout: float) -> dict[str, Any]:
    """One design: serve, attack, measure the legitimate user, stop."""
    with (
        tempfile.TemporaryDirectory(prefix=f"bench-slow-{front}-") as tmp,
        serve_portal(Path(tmp), front=front) as portal,
    ):
        host, port = portal.base_url.removeprefix("https://").split(":")
        steps = portal_user(
            portal.base_url, str(portal.staff_ca), "eng", ENGINEER_PASSWORD, DEVICE, timeout
        )
        timings = Timings()
        measure(steps, 1.0, timeout, Timings())  # warm up (imports, first connections)
        with Attack(host, int(port), idle, slow).running() as attack:
            full = attack.wait_full(max(duration, 10.0))
            reached = attack.open_now
            progress(f"{front}: {reached} attack sockets open (all: {full}); measuring")
            measure(steps, duration, timeout, timings)
        result: dict[str, Any] = timings.report(f"{front}_")
        result[f"{front}_attack_sockets"] = reached
        progress(f"{front}: {result}")
        return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 + 20 attackers, 8 s")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    args = parser.parse_args(argv)
    idle, slow = (100, 20) if args.quick else (1000, 200)
    duration = args.duration or (8.0 if args.quick else 20.0)
    raise_fd_limit()
    result: dict[str, Any] = {"idle": idle, "slowloris": slow, "duration_s": duration}
    for front in DESIGNS:
        result.update(run(front, idle, slow, duration, args.timeout))
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
