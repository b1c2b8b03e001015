"""The failure classifier, fed exceptions from REAL failed connections."""

from __future__ import annotations

import asyncio
import http
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from agent import errors
from agent.errors import Failure, GoAway, LocalCredentialsError, ProtocolMismatch, classify
from pki.tls import client_context, server_context
from tests.agent.conftest import Fleet
from tests.agent.helpers import RecordingTLSServer, free_port, tinyproxy
from tests.conftest import UNIT

SUBPROTOCOL = "outlink.tunnel.v1"


async def attempt(fleet: Fleet, url: str, proxy: str | None = None) -> BaseException:
    """One real connection attempt the way the agent makes it; return what it raised."""
    ctx = client_context(fleet.ca_file, fleet.agent_cert, fleet.agent_key)
    try:
        ws = await connect(
            url,
            ssl=ctx,
            proxy=proxy,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=1 * UNIT,
            ping_interval=None,
        )
    except BaseException as exc:
        return exc
    await ws.close()
    pytest.fail("the connection unexpectedly succeeded")


async def _echo(ws: ServerConnection) -> None:
    await ws.wait_closed()


async def relay(
    fleet: Fleet,
    respond: Callable[[ServerConnection, Request], Response | None] | None = None,
    subprotocols: list[str] | None = None,
) -> Server:
    ctx = server_context(fleet.relay_cert, fleet.relay_key, fleet.ca_file)
    return await serve(
        _echo,
        "127.0.0.1",
        0,
        ssl=ctx,
        process_request=respond,
        subprotocols=subprotocols or [SUBPROTOCOL],  # type: ignore[arg-type]
    )


@pytest.fixture
async def status_relay(fleet: Fleet) -> AsyncIterator[Callable[..., Any]]:
    servers: list[Server] = []

    async def make(status: int, headers: dict[str, str] | None = None) -> str:
        def respond(conn: ServerConnection, request: Request) -> Response:
            response = conn.respond(http.HTTPStatus(status), "refused\n")
            for k, v in (headers or {}).items():
                response.headers[k] = v
            return response

        server = await relay(fleet, respond)
        servers.append(server)
        return f"wss://localhost:{server.sockets[0].getsockname()[1]}/agent"

    yield make
    for server in servers:
        server.close()
        await server.wait_closed()


def check(failure: Failure, code: str, needs_human: bool) -> None:
    assert failure.code == code, failure
    assert failure.needs_human is needs_human, failure


async def test_relay_cert_from_another_ca_needs_a_human_and_gets_no_bytes(fleet: Fleet) -> None:
    ctx = server_context(fleet.foreign_cert, fleet.foreign_key, fleet.ca_file)
    async with RecordingTLSServer(ctx) as server:
        exc = await attempt(fleet, f"wss://localhost:{server.port}/agent")
        await asyncio.wait_for(server.finished.wait(), 5 * UNIT)
    # The websockets reconnect loop would retry this forever: it is an OSError.
    assert isinstance(exc, ssl.SSLCertVerificationError) and isinstance(exc, OSError)
    check(classify(exc), errors.RELAY_CERT_UNTRUSTED, True)
    assert server.received == b""


async def test_relay_cert_for_another_host_needs_a_human(fleet: Fleet) -> None:
    ctx = server_context(fleet.wrong_host_cert, fleet.wrong_host_key, fleet.ca_file)
    async with RecordingTLSServer(ctx) as server:
        exc = await attempt(fleet, f"wss://localhost:{server.port}/agent")
        await asyncio.wait_for(server.finished.wait(), 5 * UNIT)
    failure = classify(exc)
    check(failure, errors.RELAY_HOSTNAME_MISMATCH, True)
    assert "localhost" in failure.detail
    assert server.received == b""


async def test_connection_refused_is_retryable(fleet: Fleet) -> None:
    exc = await attempt(fleet, f"wss://localhost:{free_port()}/agent")
    assert isinstance(exc, ConnectionRefusedError)
    check(classify(exc), errors.NETWORK, False)


async def test_silent_server_times_out_retryably(fleet: Fleet) -> None:
    writers: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: writers.append(w), "127.0.0.1", 0)
    try:
        exc = await attempt(fleet, f"wss://localhost:{server.sockets[0].getsockname()[1]}/agent")
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
    check(classify(exc), errors.TIMEOUT, False)


@pytest.mark.parametrize("status", [401, 403])
async def test_our_certificate_refused_needs_a_human(
    status_relay: Callable[..., Any], fleet: Fleet, status: int
) -> None:
    exc = await attempt(fleet, await status_relay(status))
    check(classify(exc), errors.CLIENT_CERT_REFUSED, True)


async def test_429_with_retry_after_is_retryable_with_the_hint(
    status_relay: Callable[..., Any], fleet: Fleet
) -> None:
    exc = await attempt(fleet, await status_relay(429, {"Retry-After": "7"}))
    failure = classify(exc)
    check(failure, errors.RATE_LIMITED, False)
    assert failure.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_retryable(
    status_relay: Callable[..., Any], fleet: Fleet, status: int
) -> None:
    exc = await attempt(fleet, await status_relay(status, {"Retry-After": "Wed, 21 Oct 2015"}))
    failure = classify(exc)
    check(failure, errors.RELAY_UNAVAILABLE, False)
    assert failure.retry_after is None  # HTTP-date form is not trusted as a hint


async def test_subprotocol_refused_needs_a_human(fleet: Fleet) -> None:
    server = await relay(fleet, subprotocols=["outlink.tunnel.v99"])
    try:
        exc = await attempt(fleet, f"wss://localhost:{server.sockets[0].getsockname()[1]}/agent")
    finally:
        server.close()
        await server.wait_closed()
    check(classify(exc), errors.RELAY_REFUSED, True)


async def test_proxy_without_password_needs_a_human(fleet: Fleet, tmp_path: Path) -> None:
    server = await relay(fleet)
    url = f"wss://localhost:{server.sockets[0].getsockname()[1]}/agent"
    try:
        with tinyproxy(tmp_path) as proxy:
            exc = await attempt(fleet, url, proxy=proxy.url(user=None))
            check(classify(exc), errors.PROXY_AUTH_FAILED, True)
            exc = await attempt(fleet, url, proxy=proxy.url(password="wrong"))
            check(classify(exc), errors.PROXY_AUTH_FAILED, True)
            # The proxy cannot reach the relay: the proxy says so with a 5xx; retryable.
            exc = await attempt(fleet, f"wss://localhost:{free_port()}/agent", proxy=proxy.url())
            check(classify(exc), errors.PROXY_UNAVAILABLE, False)
    finally:
        server.close()
        await server.wait_closed()


async def test_unusable_proxy_address_needs_a_human_and_hides_the_password(fleet: Fleet) -> None:
    url = f"wss://localhost:{free_port()}/agent"
    exc = await attempt(fleet, url, proxy="http://agent:hunter2@127.0.0.1:1/some/path")
    failure = classify(exc)
    check(failure, errors.PROXY_INVALID, True)
    assert "hunter2" in str(exc)  # what websockets would have logged
    assert "hunter2" not in failure.detail


def test_agent_side_conditions() -> None:
    check(classify(GoAway(1.5, "restart")), errors.GOING_AWAY, False)
    assert classify(GoAway(1.5)).retry_after == 1.5
    check(classify(ProtocolMismatch()), errors.PROTOCOL_MISMATCH, True)
    check(classify(LocalCredentialsError("expired")), errors.LOCAL_CREDENTIALS, True)
    check(classify(RuntimeError("bug")), errors.INTERNAL, False)


def test_detail_never_contains_exception_text_of_unknown_errors() -> None:
    failure = classify(ValueError("http://user:hunter2@proxy:3128"))
    assert "hunter2" not in failure.detail
