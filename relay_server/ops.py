"""The ops listener: plain HTTP (loopback by default) for probes and Prometheus.

* ``/healthz``  200 while the process runs its event loop (liveness);
* ``/readyz``   200 when the TLS port is listening and the database answers, 503 with
  the reason otherwise (load balancers drain a relay that is shutting down);
* ``/metrics``  Prometheus text exposition of this relay's registry.

It is a second websockets server whose `process_request` answers every request, so
HTTP parsing and its limits are websockets' well-tested code; no WebSocket is ever
opened here.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

# A probe or scrape is answered at once; a client that does not send its request in
# this time is dropped.
OPS_REQUEST_TIMEOUT = 5.0


#: None when the relay is ready, else why not (the /readyz body).
Readiness = Callable[[], Awaitable[str | None]]


class OpsServer:
    """HTTP endpoints about one relay: its readiness check and its metrics registry."""

    def __init__(self, readiness: Readiness, metrics: CollectorRegistry) -> None:
        self._readiness = readiness
        self._metrics = metrics
        self._server: Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await serve(
            _never_called,
            host,
            port,
            process_request=self._answer,
            open_timeout=OPS_REQUEST_TIMEOUT,
            compression=None,
            server_header=None,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, connection: ServerConnection, request: Request) -> Response:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            problem = await self._readiness()
            if problem is None:
                return connection.respond(http.HTTPStatus.OK, "ready\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{problem}\n")
        if path == "/metrics":
            body = generate_latest(self._metrics)
            headers = Headers(
                [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))]
            )
            return Response(http.HTTPStatus.OK, "OK", headers, body)
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")


async def _never_called(ws: ServerConnection) -> None:  # pragma: no cover
    """Every request gets an HTTP answer in process_request; no WebSocket is opened."""
    await ws.close()
