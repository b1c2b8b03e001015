"""The relay's HTTP surfaces never answer 5xx (nor crash) to a hostile request.

Both the ops listener (``/healthz``, ``/readyz``, ``/metrics``, plain HTTP) and the
fleet port's ``process_request`` (TLS, with and without a device certificate) get
hypothesis-drawn request lines and headers: odd paths, NUL and control characters,
malformed percent-encoding and UTF-8, over-long lines, too many headers, bogus
WebSocket upgrade headers. Each answer must be a status below 500 or a closed
connection, nothing may be logged at ERROR, and the relay still answers after.
The requests are sent from a worker thread with blocking sockets while the relay
runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import UNIT
from tests.relay.conftest import Fleet

#: Requests per surface: enough to cover each kind of damage, well under 20 s in all.
EXAMPLES = 60
#: The longest an answer may take (the relay's handshake timeout is 5 UNITs).
READ_TIMEOUT = 10 * UNIT

PATHS = st.one_of(
    st.sampled_from(
        [
            *("/healthz", "/readyz", "/metrics", "/agent", "/service", "/enroll", "/", "*"),
            *("/healthz?%ff", "/%00", "/%", "/%zz", "/%C3%28", "/..%2f..%2fetc", "//x", "/\u00b2"),
            *("http://127.0.0.1/healthz", "/agent?x=" + "9" * 9000, "/" + "a" * 20000),
        ]
    ),
    st.text(st.characters(codec="utf-8"), max_size=60).map(lambda t: "/" + t),
    st.binary(max_size=40).map(lambda b: "/" + b.decode("latin-1")),
)
HEADER_NAMES = st.sampled_from(
    [
        *("Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version"),
        *("Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "Content-Length", "X-Junk"),
        *("Transfer-Encoding", "Origin"),
    ]
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            *("websocket", "Upgrade", "13", "99", "-1", "9223372036854775808", "chunked"),
            *("dGhlIHNhbXBsZSBub25jZQ==", "", "\x00", "a" * 10000, "permessage-deflate; x=\u00b2"),
            "outlink.tunnel.v1, outlink.tunnel.v1",
        ]
    ),
    st.text(st.characters(codec="latin-1"), max_size=30),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method, version = "GET", "HTTP/1.1"  # half the requests get past the request line
    if draw(st.booleans()):
        method = draw(st.sampled_from(["GET", "POST", "HEAD", "G\x00T", "", "GET GET"]))
        version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/9.9", ""]))
    lines = [f"{method} {draw(PATHS)} {version}".encode("utf-8", "surrogateescape")]
    if draw(st.booleans()):
        lines.append(b"Host: 127.0.0.1")
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8))
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    if draw(st.booleans()):  # too many headers
        lines += [b"X-Many: 1"] * draw(st.integers(100, 300))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def exchange(connect: Callable[[], socket.socket], request: bytes) -> bytes:
    """Send ``request``, return what comes back until the peer closes or stops talking."""
    with connect() as sock:
        sock.settimeout(READ_TIMEOUT)
        try:
            sock.sendall(request)
            return sock.recv(65536)
        except (ConnectionError, ssl.SSLError):  # refused mid-way: not a 5xx
            return b""


def assert_never_5xx(connect: Callable[[], socket.socket]) -> set[int]:
    """Every answer is below 500 (or the connection closed); returns the statuses seen."""
    statuses: set[int] = set()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(request=requests())
    def check(request: bytes) -> None:
        answer = exchange(connect, request)
        if answer.startswith(b"HTTP/"):
            status = int(answer.split(b" ", 2)[1])
            assert status < 500, (request[:300], answer[:300])
            statuses.add(status)

    check()
    # Still serving after all of it.
    answer = exchange(connect, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    statuses.add(int(answer.split(b" ", 2)[1]))
    return statuses


@pytest.fixture
def no_errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_ops_listener_never_answers_5xx(
    fleet: Fleet, no_errors: pytest.LogCaptureFixture
) -> None:
    port = fleet.relay.ops_port

    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)

    statuses = await asyncio.to_thread(assert_never_5xx, connect)
    assert {200, 404} <= statuses  # the handler answered (the walk is not all closed sockets)
    assert not _errors(no_errors)


@pytest.mark.parametrize("with_cert", [False, True])
async def test_fleet_port_never_answers_5xx(
    fleet: Fleet, no_errors: pytest.LogCaptureFixture, with_cert: bool
) -> None:
    context = fleet.context(fleet.device() if with_cert else None)
    port = fleet.relay.port

    def connect() -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    statuses = await asyncio.to_thread(assert_never_5xx, connect)
    assert 404 in statuses  # process_request answered (the fleet port has no /healthz)
    assert not _errors(no_errors)
