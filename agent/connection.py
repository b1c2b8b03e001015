"""The connection manager: keep one verified tunnel to a relay up, forever.

One round = try each relay URL in order (failover), and for each the proxy
candidates from `agent.proxy` in order. The first dial that completes the TLS
handshake (relay verified against the pinned CA and the URL's hostname BEFORE
any byte of HTTP is sent: websockets only writes the upgrade request after
``start_tls`` succeeded), the WebSocket upgrade with ``outlink.tunnel.v1``,
and the ``hello`` on the control channel is the link. When it ends, or when a
whole round fails, `agent.backoff` says how long to wait and `agent.errors`
says whether a human is needed (distinct alarm, retried at the backoff cap).

While connected:

* the control channel carries our requests and the relay's instructions
  (`agent.control`); relay-opened channels go to handlers registered per kind;
* a renewal task asks for a new certificate when `needs_renewal` says so; the
  new key and certificate are used from the next connection on.

The agent opens no listening socket (R19): everything here dials out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

import agent
from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.control import ControlChannel, ControlRefused, Registry
from agent.errors import (
    CLIENT_CERT_REFUSED,
    GOING_AWAY,
    Failure,
    GoAway,
    LocalCredentialsError,
    ProtocolMismatch,
    TunnelLost,
    TunnelRefused,
    classify,
)
from agent.identity import AgentIdentity, begin_renewal, complete_renewal, load_identity
from agent.proxy import ProxyCandidate, redact, resolve_proxies
from agent.status import StatusBook
from agent.watchdog import Notifier
from pki.identity import IdentityError
from pki.tls import client_context
from pki.wire import MalformedResponse
from tunnel import SUBPROTOCOLS, ErrorCode, Priority, Role, Settings
from tunnel.aio import IncomingChannel, Tunnel, websocket_options
from tunnel.errors import TunnelError

logger = logging.getLogger(__name__)

# Opening the control channel and the hello round trip; a relay slower than this is sick.
HELLO_TIMEOUT = 15.0
# After a failed renewal (relay busy, relay restarting) ask again this much later.
RENEW_RETRY = 3600.0
# Sleep towards the renewal deadline in steps no longer than this, so a wall-clock
# jump (NTP fixing a wrong clock) is noticed within hours, not weeks.
RENEW_CHECK_INTERVAL = 6 * 3600.0
# Tunnel close codes that retrying will not change: our identity is no longer welcome.
REFUSED_CODES = frozenset({ErrorCode.REVOKED, ErrorCode.FORBIDDEN})


class ConnectionManager:
    """Dial, hold, and redial the relay. `run()` returns after `stop()`."""

    def __init__(
        self,
        config: AgentConfig,
        registry: Registry,
        *,
        status: StatusBook | None = None,
        notifier: Notifier | None = None,
        rng: random.Random | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not config.relay_urls:
            raise ValueError("no relay_urls configured")
        self.config = config
        self.registry = registry
        self.status = status or StatusBook(Path(config.data_dir))
        self.notifier = notifier or Notifier({})
        b = config.backoff
        self.backoff = Backoff(
            base=b.base,
            cap=b.cap,
            stable_after=b.stable_after,
            herd_window=b.herd_window,
            goaway_jitter=b.goaway_jitter,
            rng=rng,
        )
        self._environ = environ if environ is not None else {}
        self._settings = Settings(
            client_ping_idle=config.keepalive.idle, client_ping_timeout=config.keepalive.timeout
        )
        self._stop = asyncio.Event()
        self._tunnel: Tunnel | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set while a tunnel is up and hello was answered.
        self.connected = asyncio.Event()
        self.connections = 0
        # Set while waiting between rounds; `next_delay` says for how long.
        self.waiting = asyncio.Event()
        self.next_delay = 0.0

    def stop(self) -> None:
        """Ask `run()` to close the tunnel cleanly and return."""
        self._stop.set()

    @property
    def tunnel(self) -> Tunnel | None:
        """The live tunnel, or None between connections (features open channels on it)."""
        return self._tunnel

    async def run(self) -> None:
        delay = 0.0
        try:
            while not self._stop.is_set():
                if delay > 0:
                    logger.info("= next attempt in %.1f s", delay)
                    self.status.waiting(delay)
                    self.next_delay = delay
                    self.waiting.set()
                    stopped = await self._sleep_or_stop(delay)
                    self.waiting.clear()
                    if stopped:
                        break
                delay = await self._next_round()
        finally:
            self.status.stopped()

    async def _next_round(self) -> float:
        """Run one round; abandon it if `stop()` comes while still dialling.

        A dial may take `open_timeout` (15 s) and a PAC download seconds: SIGTERM must
        not wait for them. Once a tunnel exists, `_hold` closes it cleanly instead.
        """
        round_task = self._spawn(self._round(), "round")
        stopper = self._spawn(self._stop.wait(), "stop-wait")
        try:
            await asyncio.wait([round_task, stopper], return_when=asyncio.FIRST_COMPLETED)
            if not round_task.done() and self._tunnel is None:
                round_task.cancel()
            delay: float = await round_task
            return delay
        except asyncio.CancelledError:
            if self._stop.is_set() and round_task.cancelled():
                return 0.0
            raise
        except Exception:
            # A bug must not end the agent (R1): log it and retry like a network error.
            logger.exception("! connection round failed unexpectedly")
            return self.backoff.failed()
        finally:
            stopper.cancel()

    # -- one round over relays and proxies --------------------------------------------

    async def _round(self) -> float:
        """Try every relay/proxy pair once; hold the first link. Returns the next delay."""
        try:
            identity, tls = await asyncio.to_thread(self._credentials)
        except LocalCredentialsError as exc:
            failure = classify(exc)
            self._record("local", failure)
            return self.backoff.human_failed()
        failures: list[Failure] = []
        for url in self.config.relay_urls:
            proxies = await asyncio.to_thread(resolve_proxies, url, self.config, self._environ)
            for proxy in proxies:
                if self._stop.is_set():
                    return 0.0
                self.status.connecting(url, redact(proxy))
                try:
                    ws = await self._dial(url, proxy, tls)
                except Exception as exc:
                    failure = classify(exc)
                    self._record(url, failure, exc)
                    failures.append(failure)
                    continue
                return await self._hold(ws, url, proxy, identity)
        return self._delay_after(failures)

    def _delay_after(self, failures: list[Failure]) -> float:
        if any(f.needs_human for f in failures):
            return self.backoff.human_failed()
        hints = [f.retry_after for f in failures if f.retry_after is not None]
        if hints:
            return self.backoff.retry_after(max(hints))
        return self.backoff.failed()

    def _credentials(self) -> tuple[AgentIdentity, ssl.SSLContext]:
        """Load identity + TLS context from disk (each round: renewal may have replaced them)."""
        try:
            identity = load_identity(Path(self.config.identity_dir))
        except FileNotFoundError as exc:
            raise LocalCredentialsError(
                f"not enrolled or files missing ({exc.filename}); run `outlink-agent enroll`"
            ) from None
        except (OSError, ValueError, IdentityError) as exc:
            raise LocalCredentialsError(
                f"unusable identity in {self.config.identity_dir}: {exc}"
            ) from None
        now = datetime.now(UTC)
        cert = identity.cert
        if now >= cert.not_valid_after_utc:
            raise LocalCredentialsError(
                f"our certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                "re-enrol this device"
            )
        if now < cert.not_valid_before_utc:
            raise LocalCredentialsError(
                f"our certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                "UTC; is the system clock right?"
            )
        try:
            files = identity.files
            tls = client_context(self.config.ca_file, files.cert_file, files.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise LocalCredentialsError(f"cannot load CA {self.config.ca_file}: {exc}") from None
        return identity, tls

    async def _dial(self, url: str, proxy: ProxyCandidate, tls: ssl.SSLContext) -> ClientConnection:
        logger.debug("= dialling %s via %s", url, redact(proxy))
        ws = await connect(
            url,
            ssl=tls,
            proxy=proxy,  # None = direct; never let websockets read the environment itself
            subprotocols=[Subprotocol(p) for p in SUBPROTOCOLS],
            open_timeout=self.config.open_timeout,
            user_agent_header=f"outlink-agent/{agent.__version__}",
            **websocket_options(),
        )
        if ws.subprotocol not in SUBPROTOCOLS:
            await ws.close()
            raise ProtocolMismatch()
        return ws

    def _record(self, relay: str, failure: Failure, exc: BaseException | None = None) -> None:
        level = logging.ERROR if failure.code == "internal" else logging.WARNING
        logger.log(
            level,
            "! %s: %s (%s)",
            relay,
            failure.detail,
            failure.code,
            exc_info=exc if failure.code == "internal" else None,
        )
        self.status.failed(relay, failure)

    # -- holding a link ------------------------------------------------------------------

    async def _hold(
        self, ws: ClientConnection, url: str, proxy: ProxyCandidate, identity: AgentIdentity
    ) -> float:
        """Run the tunnel until it ends or we stop; return the delay before the next round."""
        started = time.monotonic()
        device_id = identity.identity.device_id
        tunnel = Tunnel(
            ws, role=Role.CLIENT, settings=self._settings, on_open=self._on_open, name=device_id
        )
        self._tunnel = tunnel
        runner = self._spawn(tunnel.run(), "tunnel")
        link_tasks: list[asyncio.Task[Any]] = [runner]
        end: BaseException | None = None
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                channel = await tunnel.open_channel("control", meta={}, priority=Priority.CONTROL)
                control = ControlChannel(channel, self.registry)
                reader = self._spawn(control.run(), "control")
                link_tasks.append(reader)
                hello = await control.request(
                    "hello", version=agent.__version__, capabilities=self.registry.capabilities
                )
            self.connections += 1
            self.connected.set()
            self.status.connected(url, redact(proxy), device_id)
            self.notifier.status(f"connected to {url}")
            logger.info(
                "= connected to %s (relay %s) via %s as %s",
                url,
                hello.get("relay_id"),
                redact(proxy),
                device_id,
            )
            link_tasks.append(self._spawn(self._renewal(control, identity, url), "renewal"))
            link_tasks.extend(self._spawn(hook(), "announce") for hook in self.registry.on_link)
            stopper = self._spawn(self._stop.wait(), "stop-wait")
            link_tasks.append(stopper)
            # The link lives while the tunnel runs AND the control channel is open.
            await asyncio.wait([runner, reader, stopper], return_when=asyncio.FIRST_COMPLETED)
            if self._stop.is_set():
                logger.info("= stopping: closing the tunnel")
                await tunnel.close(ErrorCode.NO_ERROR, "agent stopping")
                return 0.0
        except ControlRefused as exc:
            logger.warning("! relay refused hello: %s", exc.code)
            end = ProtocolMismatch()
        except TimeoutError as exc:
            end = exc
        except (TunnelError, ConnectionError):
            end = None  # the tunnel's own close reason says more (see _delay_after_link)
        finally:
            self.connected.clear()
            self._tunnel = None
            if not runner.done():
                await tunnel.close(ErrorCode.NO_ERROR, "agent reconnecting")
            for task in link_tasks:
                task.cancel()
            await asyncio.gather(*link_tasks, return_exceptions=True)
        return self._delay_after_link(tunnel, url, end, time.monotonic() - started)

    def _delay_after_link(
        self, tunnel: Tunnel, url: str, end: BaseException | None, uptime: float
    ) -> float:
        goaway, code = tunnel.goaway, tunnel.error_code
        exc: BaseException
        if goaway is not None and goaway.code is ErrorCode.GOING_AWAY:
            exc = GoAway(goaway.retry_after_ms / 1000.0, goaway.reason)
        elif code in REFUSED_CODES:
            exc = TunnelRefused(code.name)
        elif end is not None:
            exc = end
        else:
            # Dead peer (TIMEOUT), relay crash (UNAVAILABLE), REPLACED by a newer link with
            # our certificate... Backoff decides: a flapping link is not reset, so two devices
            # sharing one certificate cannot replace each other in a tight loop.
            exc = TunnelLost(code.name if code is not None else "UNAVAILABLE")
        failure = classify(exc)
        logger.warning("! link to %s ended after %.1f s: %s", url, uptime, failure.detail)
        self.status.failed(url, failure)
        self.notifier.status(f"disconnected: {failure.code}")
        if failure.needs_human:
            return self.backoff.human_failed()
        if failure.code == GOING_AWAY and failure.retry_after is not None:
            return self.backoff.go_away(failure.retry_after)
        return self.backoff.lost(uptime)

    async def _on_open(self, request: IncomingChannel) -> None:
        """A channel the relay opens: only registered kinds are accepted."""
        handler = self.registry.channels.get(request.kind)
        if handler is None:
            logger.warning("! relay opened unknown channel kind %r; refused", request.kind)
            self.registry.on_unknown("channel", request.kind)
            request.refuse(ErrorCode.REFUSED, "unknown channel kind")
            return
        logger.debug("< open %s", request.kind)
        await handler(request)

    # -- certificate renewal ---------------------------------------------------------------

    async def _renewal(self, control: ControlChannel, identity: AgentIdentity, url: str) -> None:
        """Renew when due; the new files are picked up by the next `_credentials()`."""
        while True:
            wait = (identity.renewal_due_at - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, RENEW_CHECK_INTERVAL))
                continue
            logger.info("> renewing certificate (serial %s)", identity.identity.serial)
            try:
                request = json.loads(await asyncio.to_thread(begin_renewal, identity))
                body = await control.request("renew", csr=request["csr"])
                answer = json.dumps({"ok": True, **body})
                identity = await asyncio.to_thread(complete_renewal, identity, answer)
            except ControlRefused as exc:
                logger.warning("! renewal refused by the relay: %s", exc.code)
                if exc.code == "revoked":
                    refused = Failure(CLIENT_CERT_REFUSED, True, "certificate renewal: revoked")
                    self.status.failed(url, refused)
            except (TimeoutError, ConnectionError, TunnelError) as exc:
                logger.warning("! renewal not answered: %s", type(exc).__name__)
            except (OSError, ValueError, IdentityError, MalformedResponse) as exc:
                logger.error("! renewal answer unusable: %s", exc)
            else:
                logger.info("= certificate renewed (serial %s)", identity.identity.serial)
                continue
            await asyncio.sleep(RENEW_RETRY)

    # -- helpers ---------------------------------------------------------------------------

    async def _sleep_or_stop(self, delay: float) -> bool:
        """Sleep `delay` s; True if `stop()` was called meanwhile."""
        try:
            async with asyncio.timeout(delay):
                await self._stop.wait()
        except TimeoutError:
            return False
        return True

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
