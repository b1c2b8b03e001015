"""The relay: one TLS port serving /agent, /service and /enroll; an ops port beside it.

TLS asks for a client certificate (CERT_OPTIONAL against the fleet CA, decision 0003):
a presented certificate must chain and be valid or the TLS handshake fails. Then
`process_request` decides per path, before any WebSocket frame:

* ``/agent``   needs a device identity, not revoked          -> tunnel, `AgentLink`
* ``/service`` needs a service identity, not revoked         -> tunnel, `ServiceLink`
* ``/enroll``  needs no certificate (the token is the credential) -> `serve_enrollment`
* anything else: 404. Over the per-source limits: 429 + Retry-After; over capacity: 503.

Every refusal -- at the TLS handshake or here -- is logged, rate-limited, and counted by
reason; a refused certificate is a security event in the audit trail too
(`relay_server.refusals`).

The relay core knows no feature: the entry point attaches them with `Relay.add_feature`,
and each gets a `FeatureHost` (see `relay_server.features`); a feature may open a port
of its own with the relay's connection class, so its connections count against the
same limits.

Per connection the relay adds no task or timer of its own: the websockets handler
task runs `Tunnel.run()` (the tunnel brings its writer task and one timer).
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

import jsonlog
from pki.ca import CertificateAuthority
from pki.identity import (
    DeviceIdentity,
    IdentityError,
    ServiceIdentity,
    identity_from_peercert,
)
from pki.tls import server_context
from pki.wire import ENROLL_SUBPROTOCOL
from relay_server.agent_link import AgentLink, ControlContext
from relay_server.audit import AuditLog
from relay_server.config import RelayConfig
from relay_server.connection import RelayConnection, connection_class
from relay_server.enrollment import EnrollmentService, serve_enrollment
from relay_server.features import Feature, FeatureHost
from relay_server.limits import SourceLimiter
from relay_server.links import Link, jittered_retry_ms
from relay_server.metrics import RelayCollector, RelayStats, make_registry
from relay_server.ops import OpsServer
from relay_server.presence import PresenceWriter, check_database
from relay_server.refusals import AUDIT_KIND, CERTIFICATE_REASONS, SUMMARY_INTERVAL, RefusalLog
from relay_server.registry import Registry
from relay_server.revocation import RevocationCache
from relay_server.service_api import ServiceContext, ServiceLink
from relay_server.tasks import TaskSet
from store.db import make_engine
from tunnel import ErrorCode, Role, Settings
from tunnel import select_subprotocol as select_tunnel_version
from tunnel.aio import Tunnel, websocket_options
from tunnel.aio import select_subprotocol as negotiate_tunnel

log = logging.getLogger(__name__)

AGENT_PATH = "/agent"
SERVICE_PATH = "/service"
ENROLL_PATH = "/enroll"
_ENDPOINTS = {AGENT_PATH: "agent", SERVICE_PATH: "service", ENROLL_PATH: "enroll"}

# Frames websockets buffers before the tunnel's reader takes them (it takes each at
# once). 8 frames of <= 64 KiB bound what a connection can make us hold there.
MAX_QUEUE = 8
# Socket write buffer high-water mark: a few chunks in flight keep a bulk channel at
# line rate; an idle connection uses none of it.
WRITE_LIMIT = 64 * 1024
# Pending TCP connections the kernel queues for accept(): agents come back in bursts
# after a relay restart (jitter spreads them over seconds, not milliseconds).
LISTEN_BACKLOG = 1024
# The Server header names the product, not library versions.
SERVER_HEADER = "outlink-relay"
# /readyz gives up on the database after this long.
READY_DB_TIMEOUT = 2.0


class Relay:
    """One relay process's state. `add_feature()` each feature, `await start()`, then
    `await stop()` (graceful)."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        engine: Engine | None = None,
        ca: CertificateAuthority | None = None,
    ) -> None:
        self.config = config
        self.engine = engine if engine is not None else make_engine(config.db_url)
        self._owns_engine = engine is None
        self.ca = ca
        self.ssl_context = server_context(config.tls.cert, config.tls.key, config.tls.ca)
        limits = config.limits
        self.tunnel_settings = Settings(
            max_channels=limits.max_channels,
            max_pending_opens=limits.max_pending_opens,
            server_ping_idle=config.keepalive.idle,
            server_ping_timeout=config.keepalive.timeout,
        )
        self.stats = RelayStats()
        self.tasks = TaskSet()
        self.limiter = SourceLimiter(
            max_per_source=limits.max_connections_per_source,
            rate=limits.connect_rate_per_source,
            burst=limits.connect_burst_per_source,
            max_total=limits.max_connections,
            max_tracked=limits.max_tracked_sources,
        )
        self.presence = PresenceWriter(
            self.engine,
            config.relay_id,
            config.public_service_url,
            flush_interval=config.presence.flush_interval,
            last_seen_interval=config.presence.last_seen_interval,
            heartbeat_interval=config.presence.heartbeat_interval,
        )
        self.audit = AuditLog(self.engine, config.relay_id)
        self.refusals = RefusalLog(self.audit, self.stats, time.monotonic())
        self.registry = Registry(self.presence, self.stats, self.tasks, self.audit)
        self.revocation = RevocationCache(
            self.engine, config.revocation.refresh_interval, self.registry.enforce_revocations
        )
        self.control = ControlContext(
            config.relay_id, self.engine, self.presence, self.stats, self.audit, ca
        )
        self.services = ServiceContext(
            config.relay_id,
            self.registry.agents,
            self.stats,
            self.audit,
            self.tasks,
            self.revocation,
            retire_grace=config.shutdown.grace,
            accept_timeout=self.tunnel_settings.accept_timeout,
        )
        self.enrollment = EnrollmentService(self.engine, ca) if ca is not None else None
        self.metrics_registry = make_registry(
            RelayCollector(
                config.relay_id,
                self.stats,
                agents=self.registry.agents,
                services=self.registry.services,
                limiter=self.limiter,
                revocation=self.revocation,
                presence=self.presence,
                audit=self.audit,
            )
        )
        self._connection_class = connection_class(self.stats, self.limiter, self.refusals)
        self.host = FeatureHost(
            config=config,
            engine=self.engine,
            agents=self.registry.agents,
            stats=self.stats,
            audit=self.audit,
            refusals=self.refusals,
            tasks=self.tasks,
            connection_class=self._connection_class,
            control=self.control,
            metrics=self.metrics_registry,
        )
        self._features: list[Feature] = []
        self._server: Server | None = None
        self._ops: OpsServer | None = None
        self._started = False
        self._stopping = False
        self.stopped = asyncio.Event()

    def add_feature(self, feature: Feature) -> None:
        """Attach `feature` (before `start`): it registers its handlers with `host` now;
        the relay starts and stops it (order: `relay_server.features`)."""
        if self._started:
            raise RuntimeError("add features before start()")
        feature.attach(self.host)
        self._features.append(feature)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Register in the database, load revocations, start the features, then listen
        (TLS port, ops port)."""
        config = self.config
        self._started = True
        await self.presence.start()
        await self.revocation.start()
        await self.audit.start()
        self.tasks.spawn(self._summarise_refusals(), "refusal-summaries")
        for feature in self._features:
            await feature.start()
        self._server = await serve(
            self._handle,
            config.listen.host,
            config.listen.port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=config.listen.handshake_timeout,
            open_timeout=config.listen.handshake_timeout,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            create_connection=self._connection_class,
            max_queue=MAX_QUEUE,
            write_limit=WRITE_LIMIT,
            server_header=SERVER_HEADER,
            backlog=LISTEN_BACKLOG,
            **websocket_options(),
        )
        self._ops = OpsServer(self.readiness, self.metrics_registry)
        await self._ops.start(config.ops.host, config.ops.port)
        log.info(
            "listening",
            extra={
                "relay_id": config.relay_id,
                "host": config.listen.host,
                "port": self.port,
                "ops_port": self.ops_port,
                "service_url": config.public_service_url,
            },
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def ops_port(self) -> int:
        assert self._ops is not None, "start() first"
        return self._ops.port

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, GOAWAY every tunnel with a random
        retry_after (agents come back promptly, spread out), close what is left after
        the grace period, stop the features, mark presence offline, write what is
        queued. Idempotent."""
        if self._stopping:
            await self.stopped.wait()
            return
        self._stopping = True
        shutdown = self.config.shutdown
        links = self.registry.all_links()
        log.info("= shutting down: %d tunnels", len(links))
        if self._server is not None:
            self._server.close(close_connections=False)  # listening stops; handshakes get 503
        await asyncio.gather(
            *(
                link.retire(
                    jittered_retry_ms(shutdown.retry_after_min_ms, shutdown.retry_after_max_ms),
                    "relay shutting down",
                    shutdown.grace,
                )
                for link in links
            ),
            return_exceptions=True,
        )
        if self._server is not None:
            self._server.close()  # anything that connected meanwhile
            await self._server.wait_closed()
        await self.tasks.cancel_all()
        for feature in reversed(self._features):
            await feature.stop()
        await self.revocation.stop()
        await self.presence.stop()
        self.refusals.sweep()  # what the rate limit held back since the last summary
        await self.audit.stop()
        if self._ops is not None:
            await self._ops.stop()
        if self._owns_engine:
            self.engine.dispose()
        log.info("= stopped")
        self.stopped.set()

    async def _summarise_refusals(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_INTERVAL)
            self.refusals.sweep()

    async def readiness(self) -> str | None:
        """None when ready; otherwise why not (for /readyz)."""
        if self._stopping:
            return "shutting down"
        if self._server is None or not self._server.is_serving():
            return "not listening"
        try:
            async with asyncio.timeout(READY_DB_TIMEOUT):
                await asyncio.to_thread(check_database, self.engine)
        except Exception:  # any failure means "not ready"; details go to our log only
            log.warning("! readiness: database unreachable", exc_info=True)
            return "database unreachable"
        return None

    # -- handshake ----------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        assert isinstance(connection, RelayConnection)
        endpoint = _ENDPOINTS.get(urlsplit(request.path).path)
        if endpoint is None:
            return self._reject(connection, "other", "not_found", 404, "not found\n")
        refusal = self.limiter.check(connection.source, time.monotonic())
        if refusal is not None:
            response = self._reject(
                connection, endpoint, refusal.outcome, refusal.status, refusal.text
            )
            response.headers["Retry-After"] = str(refusal.retry_after)
            return response
        if endpoint == "enroll":
            if self.enrollment is None:
                return self._reject(
                    connection, endpoint, "unavailable", 503, "enrolment is not offered here\n"
                )
            self.stats.handshakes[(endpoint, "ok")] += 1
            return None
        peercert = connection.transport.get_extra_info("peercert")
        if not peercert:
            return self._reject(
                connection, endpoint, "no_cert", 401, "client certificate required\n"
            )
        try:
            identity = identity_from_peercert(peercert)
        except IdentityError:
            return self._reject(
                connection, endpoint, "bad_cert", 403, "certificate names no Outlink identity\n"
            )
        wanted = DeviceIdentity if endpoint == "agent" else ServiceIdentity
        if not isinstance(identity, wanted):
            return self._reject(
                connection,
                endpoint,
                "wrong_identity",
                403,
                f"{endpoint} endpoint needs a {'device' if endpoint == 'agent' else 'service'}"
                " certificate\n",
            )
        if self.revocation.is_revoked(identity):
            return self._reject(
                connection,
                endpoint,
                "revoked",
                403,
                "certificate revoked\n",
                device_id=identity.device_id if isinstance(identity, DeviceIdentity) else None,
            )
        if not _offers_tunnel(request):
            return self._reject(
                connection,
                endpoint,
                "bad_subprotocol",
                400,
                "no supported tunnel protocol version offered\n",
            )
        connection.identity = identity
        self.stats.handshakes[(endpoint, "ok")] += 1
        return None

    def _reject(
        self,
        connection: RelayConnection,
        endpoint: str,
        outcome: str,
        status: int,
        text: str,
        *,
        device_id: str | None = None,
    ) -> Response:
        """Count, record (`relay_server.refusals`: certificate refusals are audited, with
        the presented certificate) and answer a refused request."""
        self.stats.handshakes[(endpoint, outcome)] += 1
        ssl_object = connection.transport.get_extra_info("ssl_object")
        self.refusals.refused(
            outcome,
            time.monotonic(),
            source=connection.source,
            peer=connection.peer,
            endpoint=endpoint,
            audit_kind=AUDIT_KIND if outcome in CERTIFICATE_REASONS else None,
            cert_der=ssl_object.getpeercert(binary_form=True) if ssl_object else None,
            device_id=device_id,
            status=status,
        )
        return connection.respond(http.HTTPStatus(status), text)

    def _select_subprotocol(self, connection: ServerConnection, offered: Any) -> Subprotocol | None:
        request = connection.request
        if request is not None and urlsplit(request.path).path == ENROLL_PATH:
            # serve_enrollment closes with 1008 when the subprotocol is missing.
            return Subprotocol(ENROLL_SUBPROTOCOL) if ENROLL_SUBPROTOCOL in offered else None
        return negotiate_tunnel(connection, offered)

    # -- connections --------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, RelayConnection)
        identity = ws.identity
        if identity is None:  # /enroll: process_request let it through without identity
            assert self.enrollment is not None
            jsonlog.bind(peer=ws.peer, endpoint="enroll")
            await serve_enrollment(ws, self.enrollment)
        elif isinstance(identity, DeviceIdentity):
            jsonlog.bind(device=identity.device_id, peer=ws.peer)
            await self._serve(AgentLink(identity, ws.peer, ws, self.control), "agent")
        else:
            jsonlog.bind(service=identity.name, peer=ws.peer)
            await self._serve(ServiceLink(identity, ws.peer, ws, self.services), "service")

    async def _serve(self, link: Link, endpoint: str) -> None:
        assert isinstance(link, AgentLink | ServiceLink)
        tunnel = Tunnel(
            link.ws,
            role=Role.SERVER,
            settings=self.tunnel_settings,
            on_open=link.on_open,
            name=link.device_id if isinstance(link, AgentLink) else f"service:{link.name}",
        )
        link.tunnel = tunnel
        # The handshake's headers (~3 KiB) are not needed any more; 10,000 idle tunnels
        # should not keep them. (websockets needs the request object itself.)
        for message in (link.ws.request, link.ws.response):
            if message is not None:
                message.headers = Headers()
        if self._stopping:
            await tunnel.close(ErrorCode.GOING_AWAY, "relay shutting down")
            return
        if self.revocation.is_revoked(link.identity):
            # Revoked while its handshake was in flight: the cache reload that noticed
            # could not see this link yet, and no later reload will find anything new.
            self.stats.revoked_closed += 1
            await tunnel.close(ErrorCode.REVOKED, "certificate revoked")
            return
        if isinstance(link, AgentLink):
            self.registry.add_agent(link)
        else:
            self.registry.services.add(link)
        log.info("= %s connected", endpoint)
        try:
            await tunnel.run()
        finally:
            if isinstance(link, AgentLink):
                self.registry.remove_agent(link)
            else:
                self.registry.services.discard(link)
            self.stats.fold(endpoint, tunnel.stats.items())
            code = tunnel.error_code.name if tunnel.error_code is not None else "NO_ERROR"
            self.stats.tunnels_closed[(endpoint, code)] += 1
            log.info("= %s disconnected: %s (websocket %s)", endpoint, code, tunnel.close_code)


def _offers_tunnel(request: Request) -> bool:
    try:
        offered = [
            proto
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for proto in parse_subprotocol(value)
        ]
    except InvalidHeader:
        return False
    return select_tunnel_version(offered) is not None
