"""``/view``: a browser viewer joins a remote desktop session through the relay.

``/view`` has its own TLS port (``[viewer] port``, same host; ``[viewer] cert`` is a
certificate browsers trust): its handshake asks for no client certificate -- the ticket
is the credential, and Chromium cancels a WebSocket handshake whose server asks for a
certificate (the fleet port does, for agents and services).
Handshake checks (:meth:`ViewerService.admit`):

1. ``Origin`` must be one of ``[viewer] allowed_origins`` (the portal's pages), else 403:
   a page on another site cannot use a ticket it got hold of;
2. the subprotocol ``outlink.desktop.v1`` must be offered, else 400;
3. ``?ticket=`` is spent with ONE conditional UPDATE and checked by
   `store.desktop.admit_viewer` (session accepted or started, the ticket's own user,
   device, session and mode, and `store.desktop.viewer_rights`), else 403 -- bad,
   replayed, expired, altered and foreign tickets all look alike;
4. the device's tunnel must be on this relay, else 503.

Then (:meth:`ViewerService.serve`) the relay opens a ``desktop`` channel on the device's
tunnel with meta ``{"session_id", "mode", "viewer", "clipboard"}`` -- the mode is the
ticket's, whatever the browser asks; ``clipboard`` says whether the user may use it when
the session starts (the relay filters it live) -- and passes messages both ways:

* binary messages are `desktop.wire` messages: device -> viewer as they come,
  viewer -> device checked (`desktop.wire.decode_viewer_message`) and screened
  (:func:`screen_to_device`: a view-only session passes no input, a user without
  ``desktop.clipboard`` gets no clipboard either way). Backpressure is end to end: a
  message is taken from one side only when the other side has taken the previous
  one, so a slow browser stops credit on the channel and slows the device's encoder;
  per viewer the relay holds at most the channel's window plus one message.
* text messages are the relay's own JSON: ``{"op": "hello", "session_id", "mode",
  "clipboard"}`` and ``{"op": "ping", "t", "rtt_ms", "device_rtt_ms"}`` to the viewer,
  which answers ``{"op": "pong", "t"}``; ``{"op": "rights", "clipboard"}`` when that
  right changes (the device gets `desktop.wire.Rights` on the channel at the same time:
  it enforces the right too, and a viewer's RIGHTS message is malformed).

Every RECHECK_INTERVAL the relay checks the user again (`store.desktop.recheck_viewer`:
active, permission, scope, session still running); if that fails the viewer is closed
with 4403, the channel is reset (the agent ends the session) and the session is
recorded as ended (``access-withdrawn``): a disabled account or a removed right ends
a live session within 10 s. A viewer that drops leaves the channel waiting
REATTACH_GRACE for the same user to come back with a new ticket (the page reconnects
by itself); after that the channel is reset and the session is over.

Close codes to the viewer: 4400 malformed message, 4403 access withdrawn (or not
verifiable), 4409 replaced by a newer viewer of the same session, 4410 the session
ended, 4503 the device is unavailable, 1001 the relay is shutting down.
"""

from __future__ import annotations

import asyncio
import enum
import http
import json
import logging
import ssl
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

import jsonlog
from desktop import wire
from pki.tls import server_context
from protocol.desktop import CHANNEL_KIND, EndReason, JoinMeta, Mode
from relay_server.desktop.events import DesktopEvents
from store import desktop
from store.db import make_sessionmaker, session_scope
from store.desktop import Admission, Refused
from tunnel import ErrorCode
from tunnel.aio import Channel, ChannelError, TunnelClosedError

if TYPE_CHECKING:
    from relay_server.agent_link import AgentLink
    from relay_server.audit import AuditLog
    from relay_server.config import ListenConfig, TLSConfig, ViewerConfig
    from relay_server.connection import RelayConnection
    from relay_server.metrics import RelayStats
    from relay_server.refusals import RefusalLog
    from relay_server.tasks import TaskSet

log = logging.getLogger(__name__)

VIEW_PATH: Final = "/view"
SUBPROTOCOL: Final = Subprotocol("outlink.desktop.v1")

RECHECK_INTERVAL: Final = 5.0
"""Seconds between checks of a live viewer's rights: a withdrawn right ends the session
within 10 s (one interval plus a database round trip)."""

MAX_RECHECK_FAILURES: Final = 2
"""Consecutive checks that could not reach the database before the viewer is closed:
access that cannot be verified for 10 s is access withdrawn."""

PING_INTERVAL: Final = 2.5
"""Latency probes to the viewer (status bar), and how fast a dead viewer is noticed."""

REATTACH_GRACE: Final = 20.0
"""How long the device's channel waits for its viewer to come back after a drop."""

VIEWER_MAX_MESSAGE: Final = wire.MAX_CLIPBOARD + 1
"""Largest message a viewer sends (a clipboard); input messages are a few bytes."""

VIEWER_MAX_QUEUE: Final = 4
"""Frames websockets buffers per viewer before it stops reading the socket: with
VIEWER_MAX_MESSAGE, at most ~1 MiB per viewer on the way in."""

WRITE_LIMIT: Final = 64 * 1024
"""The viewer socket's write buffer high-water mark: `send` waits above it, which is
what stops the pump (and the channel's credit) for a slow browser."""

MAX_TEXT: Final = 1024
"""The relay's JSON messages from the viewer are tiny (a pong)."""

MAX_TICKET_PARAM: Final = 128

CHANNEL_WINDOW: Final = wire.MAX_MESSAGE
"""The desktop channel's receive window and max message: one device message (a screen
update part) may be this large, and this is all the relay buffers per viewer."""

JOIN_REFUSED: Final = "desktop.join_refused"
"""Audit kind of a viewer refused at the handshake or at the channel's opening."""

CLOSE_BAD_MESSAGE: Final = 4400
CLOSE_FORBIDDEN: Final = 4403
CLOSE_REPLACED: Final = 4409
CLOSE_ENDED: Final = 4410
CLOSE_UNAVAILABLE: Final = 4503


class Verdict(enum.Enum):
    PASS = "pass"  # noqa: S105  (a verdict, not a password)
    DROP = "drop"
    BAD = "bad"


_INPUT: Final = frozenset({wire.MessageType.POINTER, wire.MessageType.WHEEL, wire.MessageType.KEY})


def screen_to_device(data: bytes, mode: Mode, clipboard: bool) -> Verdict:
    """What happens to one binary message from the viewer (sans-I/O)."""
    try:
        wire.decode_viewer_message(data)
    except wire.WireError:
        return Verdict.BAD
    kind = data[0]
    if kind == wire.MessageType.RIGHTS:
        return Verdict.BAD  # the relay's own message to the device: a viewer cannot send it
    if kind == wire.MessageType.CLIPBOARD:
        return Verdict.PASS if clipboard and mode is Mode.CONTROL else Verdict.DROP
    if kind in _INPUT and mode is not Mode.CONTROL:
        return Verdict.DROP
    return Verdict.PASS


def screen_to_viewer(data: bytes, clipboard: bool) -> bool:
    """Whether one device message reaches the viewer (the clipboard needs its right)."""
    return clipboard or not data or data[0] != wire.MessageType.CLIPBOARD


class Outcome(enum.Enum):
    """Why one viewer's attachment ended."""

    VIEWER_LEFT = "viewer-left"
    BAD_MESSAGE = "bad-message"
    REPLACED = "replaced"
    SESSION_OVER = "session-over"
    ENDED_ELSEWHERE = "ended-elsewhere"  # recorded as over (e.g. by the portal)
    DEVICE_GONE = "device-gone"
    WITHDRAWN = "access-withdrawn"
    UNVERIFIABLE = "access-unverifiable"


_CLOSE: Final = {
    Outcome.BAD_MESSAGE: (CLOSE_BAD_MESSAGE, "malformed message"),
    Outcome.REPLACED: (CLOSE_REPLACED, "another viewer took over this session"),
    Outcome.SESSION_OVER: (CLOSE_ENDED, "the session has ended"),
    Outcome.ENDED_ELSEWHERE: (CLOSE_ENDED, "the session has ended"),
    Outcome.DEVICE_GONE: (CLOSE_UNAVAILABLE, "the device disconnected"),
    Outcome.WITHDRAWN: (CLOSE_FORBIDDEN, "access withdrawn"),
    Outcome.UNVERIFIABLE: (CLOSE_FORBIDDEN, "access could not be verified"),
}


@dataclass(eq=False)
class LiveSession:
    """A session's desktop channel on this relay and the viewer attached to it, if any."""

    admission: Admission
    link: AgentLink
    channel: Channel
    clipboard: bool
    started: float = field(default_factory=time.monotonic)
    bytes_to_viewer: int = 0
    bytes_from_viewer: int = 0
    inputs_dropped: int = 0
    viewer: Attachment | None = None
    grace: asyncio.Task[None] | None = None


@dataclass(eq=False)
class Attachment:
    """One viewer connection attached to a live session."""

    ws: ServerConnection
    peer: str
    tasks: list[asyncio.Task[Outcome]] = field(default_factory=list)
    forced: Outcome | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    rtt: float | None = None

    def stop(self, outcome: Outcome) -> None:
        self.forced = outcome
        for task in self.tasks:
            task.cancel()


class ViewerService:
    """``/view`` on one relay: admission, live sessions, their viewers.

    Session changes go to `events` (in order with the agents' reports); refusals and
    joins to the relay's `audit`; grace timers run in the relay's `tasks`.
    """

    def __init__(
        self,
        engine: Engine,
        events: DesktopEvents,
        *,
        viewer: ViewerConfig,
        tls: TLSConfig,
        listen: ListenConfig,
        agents: Mapping[str, AgentLink],
        stats: RelayStats,
        audit: AuditLog,
        refusals: RefusalLog,
        tasks: TaskSet,
        connection_class: type[RelayConnection],
    ) -> None:
        self._config = viewer
        self._tls = tls
        self._listen = listen
        self._agents = agents
        self._stats = stats
        self._audit = audit
        self._refusals = refusals
        self._tasks = tasks
        self._connection_class = connection_class
        self._origins = frozenset(viewer.allowed_origins)
        self._server: Server | None = None
        self._stopping = False
        self._sessions = make_sessionmaker(engine)
        self.events = events
        self._admitted: weakref.WeakKeyDictionary[ServerConnection, Admission] = (
            weakref.WeakKeyDictionary()
        )
        self.live: dict[str, LiveSession] = {}

    async def start(self) -> None:
        """The viewer port, when any portal origin is allowed."""
        if not self._origins:
            log.info("= no [viewer] allowed_origins: no viewer port")
            return
        viewer, tls, listen = self._config, self._tls, self._listen
        context = server_context(viewer.cert or tls.cert, viewer.key or tls.key, tls.ca)
        context.verify_mode = ssl.CERT_NONE  # never ask a browser for a certificate
        self._server = await serve(
            self.serve,
            listen.host,
            viewer.port,
            ssl=context,
            ssl_handshake_timeout=listen.handshake_timeout,
            open_timeout=listen.handshake_timeout,
            process_request=self.admit,
            select_subprotocol=lambda _conn, offered: (
                SUBPROTOCOL if SUBPROTOCOL in offered else None
            ),
            create_connection=self._connection_class,
            max_size=VIEWER_MAX_MESSAGE,
            max_queue=VIEWER_MAX_QUEUE,
            write_limit=WRITE_LIMIT,
            compression=None,
            server_header="outlink-relay",
        )
        log.info("= viewer port %d", self.port)

    @property
    def port(self) -> int:
        assert self._server is not None, "no viewer port (no [viewer] allowed_origins)"
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Every live session ends (the agents end them on the reset), viewers get 1001."""
        self._stopping = True
        for live in list(self.live.values()):
            if live.grace is not None:
                live.grace.cancel()
            live.channel.reset(ErrorCode.GOING_AWAY, "relay shutting down")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- handshake ----------------------------------------------------------------------

    async def admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """`process_request` of the viewer port: path, Origin, subprotocol, ticket, device."""
        connection = cast("RelayConnection", connection)  # the relay's connection class
        if urlsplit(request.path).path != VIEW_PATH:
            return self._refuse(connection, "not_found", 404, "not found\n", audit=False)
        origins = request.headers.get_all("Origin")
        if len(origins) != 1 or origins[0] not in self._origins:
            return self._refuse(
                connection,
                "bad_origin",
                403,
                "origin not allowed\n",
                origin=origins[0][:200] if origins else None,
            )
        if not _offers(request, SUBPROTOCOL):
            return self._refuse(
                connection,
                "bad_subprotocol",
                400,
                f"subprotocol {SUBPROTOCOL} required\n",
                audit=False,
            )
        tickets = parse_qs(urlsplit(request.path).query).get("ticket", [])
        if len(tickets) != 1 or len(tickets[0]) > MAX_TICKET_PARAM:
            return self._refuse(connection, "bad_ticket", 403, "ticket refused\n")
        try:
            admission = await asyncio.to_thread(self._admit, tickets[0])
        except Refused as refused:
            ticket = refused.ticket
            return self._refuse(
                connection,
                "bad_ticket",
                403,
                "ticket refused\n",
                device_id=ticket.device_id if ticket else None,
                code=refused.code,
                user_id=ticket.user_id if ticket else None,
            )
        except SQLAlchemyError:
            log.exception("! viewer admission: database error")
            return self._refuse(connection, "unavailable", 503, "try again shortly\n")
        link = self._agents.get(admission.device_id)
        if link is None or link.tunnel is None:
            return self._refuse(
                connection,
                "device_unavailable",
                503,
                "the device is not connected to this relay\n",
                device_id=admission.device_id,
                code="device-not-here",
            )
        self._admitted[connection] = admission
        self._stats.handshakes[("view", "ok")] += 1
        return None

    def _admit(self, secret: str) -> Admission:
        with session_scope(self._sessions) as session:
            try:
                return desktop.admit_viewer(session, secret, datetime.now(UTC))
            except Refused:
                session.commit()  # the ticket stays spent: one try per ticket
                raise

    def _refuse(
        self,
        connection: RelayConnection,
        outcome: str,
        status: int,
        text: str,
        *,
        device_id: str | None = None,
        audit: bool = True,
        **details: Any,
    ) -> Response:
        """Refuse the handshake; refusals that concern a session or a foreign site are
        audited (not stray requests: counted and logged only) -- all rate-limited by the
        relay's refusal log, so a flood of bad tickets cannot fill the audit trail."""
        self._stats.handshakes[("view", outcome)] += 1
        self._refusals.refused(
            outcome,
            time.monotonic(),
            source=connection.source,
            peer=connection.peer,
            endpoint="view",
            audit_kind=JOIN_REFUSED if audit else None,
            device_id=device_id,
            status=status,
            **{k: v for k, v in details.items() if v is not None},
        )
        return connection.respond(http.HTTPStatus(status), text)

    # -- sessions -----------------------------------------------------------------------

    async def serve(self, ws: ServerConnection) -> None:
        """The WebSocket handler for an admitted viewer."""
        ws = cast("RelayConnection", ws)
        admission = self._admitted.pop(ws, None)
        if admission is None:  # cannot happen: admit() let it through
            await ws.close(CLOSE_FORBIDDEN, "not admitted")
            return
        jsonlog.bind(peer=ws.peer, endpoint="view", device=admission.device_id)
        live = self.live.get(admission.session_id)
        reattached = live is not None
        if live is None:
            live = await self._open(ws, admission)
            if live is None:
                return
        else:
            if live.grace is not None:
                live.grace.cancel()
                live.grace = None
            if live.viewer is not None:
                old = live.viewer
                old.stop(Outcome.REPLACED)
                await old.done.wait()
            live.admission = admission
        await self._attach(live, ws, reattached)

    async def _open(self, ws: RelayConnection, admission: Admission) -> LiveSession | None:
        link = self._agents.get(admission.device_id)
        meta = JoinMeta(
            admission.session_id, admission.mode, admission.username, admission.clipboard
        ).to_json()
        try:
            if link is None or link.tunnel is None:
                raise TunnelClosedError(ErrorCode.UNAVAILABLE, "", close_code=None)
            channel = await link.tunnel.open_channel(
                CHANNEL_KIND, meta, window=CHANNEL_WINDOW, max_message=CHANNEL_WINDOW
            )
        except ChannelError as exc:
            log.info("! desktop channel for %s not opened: %s", admission.session_id, exc)
            self._audit.record(
                JOIN_REFUSED,
                "the device did not open the desktop channel",
                outcome="failure",
                device_id=admission.device_id,
                source=ws.peer,
                session_id=admission.session_id,
                engineer=admission.username,
                reason=exc.code.name.lower(),
            )
            await ws.close(
                CLOSE_UNAVAILABLE if isinstance(exc, TunnelClosedError) else CLOSE_ENDED,
                "the device did not start the session",
            )
            return None
        live = LiveSession(admission, link, channel, admission.clipboard)
        self.live[admission.session_id] = live
        log.info("= desktop channel open for session %s (%s)", admission.session_id, admission.mode)
        return live

    async def _attach(self, live: LiveSession, ws: RelayConnection, reattached: bool) -> None:
        admission = live.admission
        attachment = Attachment(ws, ws.peer)
        live.viewer = attachment
        self._audit.record(
            "desktop.joined",
            f"{admission.username} joined the desktop session",
            device_id=admission.device_id,
            source=ws.peer,
            session_id=admission.session_id,
            engineer=admission.username,
            mode=str(admission.mode),
            clipboard=live.clipboard,
            reattached=reattached,
        )
        joined = time.monotonic()
        outcome = Outcome.VIEWER_LEFT
        try:
            if reattached and admission.clipboard != live.clipboard:
                # the new ticket carries the user's rights as they are now
                live.clipboard = admission.clipboard
                await live.channel.send(wire.Rights(admission.clipboard).encode())
            await ws.send(
                _json(
                    op="hello",
                    session_id=admission.session_id,
                    mode=str(admission.mode),
                    clipboard=live.clipboard,
                )
            )
            if reattached:  # the picture in the new page is blank: ask for all of it
                await live.channel.send(wire.RefreshRequest().encode())
            attachment.tasks = [
                asyncio.create_task(self._to_viewer(live, ws), name="view: to viewer"),
                asyncio.create_task(
                    self._from_viewer(live, ws, attachment), name="view: from viewer"
                ),
                asyncio.create_task(self._watch(live, ws, attachment), name="view: watch"),
            ]
            done, _ = await asyncio.wait(attachment.tasks, return_when=asyncio.FIRST_COMPLETED)
            outcome = attachment.forced or _first_outcome(done)
        except ConnectionClosed:
            outcome = Outcome.VIEWER_LEFT
        except ChannelError as exc:
            outcome = _channel_outcome(exc)
        finally:
            for task in attachment.tasks:
                task.cancel()
            await asyncio.gather(*attachment.tasks, return_exceptions=True)
            outcome = attachment.forced or outcome
            if live.viewer is attachment:
                live.viewer = None
            attachment.done.set()
        await self._finish(live, attachment, outcome, time.monotonic() - joined)

    async def _finish(
        self, live: LiveSession, attachment: Attachment, outcome: Outcome, seconds: float
    ) -> None:
        admission = live.admission
        code, reason = _CLOSE.get(outcome, (1000, ""))
        if outcome is not Outcome.VIEWER_LEFT:
            await attachment.ws.close(code, reason)
        self._audit.record(
            "desktop.viewer_left",
            f"viewer left the desktop session: {outcome.value}",
            device_id=admission.device_id,
            source=attachment.peer,
            session_id=admission.session_id,
            engineer=admission.username,
            reason=outcome.value,
            seconds=round(seconds, 3),
            bytes_to_viewer=live.bytes_to_viewer,
            bytes_from_viewer=live.bytes_from_viewer,
            inputs_dropped=live.inputs_dropped,
        )
        log.info("= viewer of session %s left: %s", admission.session_id, outcome.value)
        if outcome in (Outcome.VIEWER_LEFT, Outcome.BAD_MESSAGE) and not self._stopping:
            live.grace = self._tasks.spawn(
                self._await_return(live), name=f"view grace {admission.session_id}"
            )
        elif outcome is not Outcome.REPLACED:
            self._end(live, outcome)

    async def _await_return(self, live: LiveSession) -> None:
        try:
            await asyncio.sleep(REATTACH_GRACE)
        except asyncio.CancelledError:
            return  # a viewer came back (or the relay stops)
        live.grace = None
        self._end(live, Outcome.VIEWER_LEFT)

    def _end(self, live: LiveSession, outcome: Outcome) -> None:
        """The session is over on this relay: drop the channel, record why."""
        admission = live.admission
        if self.live.get(admission.session_id) is live:
            del self.live[admission.session_id]
        if outcome is Outcome.SESSION_OVER:
            return  # the agent ended it and reports why itself
        code = (
            ErrorCode.FORBIDDEN
            if outcome in (Outcome.WITHDRAWN, Outcome.UNVERIFIABLE)
            else ErrorCode.CANCELLED
        )
        live.channel.reset(code, outcome.value)
        reason = {
            Outcome.WITHDRAWN: EndReason.ACCESS_WITHDRAWN,
            Outcome.UNVERIFIABLE: EndReason.ACCESS_WITHDRAWN,
            Outcome.DEVICE_GONE: EndReason.DEVICE_DISCONNECTED,
        }.get(outcome, EndReason.VIEWER_LEFT)
        actor = self.events.actor
        to_viewer, from_viewer = live.bytes_to_viewer, live.bytes_from_viewer

        def job(session: Session) -> None:
            desktop.record_ended(
                session,
                admission.session_id,
                reason=reason,
                now=datetime.now(UTC),
                actor=actor,
                device_id=admission.device_id,
                bytes_to_viewer=to_viewer,
                bytes_from_viewer=from_viewer,
            )

        self.events.submit(job)

    # -- the pumps ----------------------------------------------------------------------

    async def _to_viewer(self, live: LiveSession, ws: ServerConnection) -> Outcome:
        """Device -> viewer: take a message only once the previous one was written."""
        try:
            while True:
                data = await live.channel.recv()
                if screen_to_viewer(data, live.clipboard):
                    await ws.send(data)
                    live.bytes_to_viewer += len(data)
        except EOFError:
            return Outcome.SESSION_OVER
        except ChannelError as exc:
            return _channel_outcome(exc)
        except ConnectionClosed:
            return Outcome.VIEWER_LEFT

    async def _from_viewer(
        self, live: LiveSession, ws: ServerConnection, attachment: Attachment
    ) -> Outcome:
        """Viewer -> device, screened; the relay's own text messages answered here."""
        try:
            while True:
                message = await ws.recv()
                if isinstance(message, str):
                    self._on_text(message, attachment)
                    continue
                verdict = screen_to_device(message, live.admission.mode, live.clipboard)
                if verdict is Verdict.BAD:
                    log.info("! malformed message from the viewer")
                    return Outcome.BAD_MESSAGE
                if verdict is Verdict.DROP:
                    live.inputs_dropped += 1
                    continue
                await live.channel.send(message)
                live.bytes_from_viewer += len(message)
        except ConnectionClosed:
            return Outcome.VIEWER_LEFT
        except EOFError:
            return Outcome.SESSION_OVER
        except ChannelError as exc:
            return _channel_outcome(exc)

    def _on_text(self, message: str, attachment: Attachment) -> None:
        if len(message) > MAX_TEXT:
            return
        try:
            msg = json.loads(message)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("op") == "pong":
            sent = msg.get("t")
            if isinstance(sent, int | float) and not isinstance(sent, bool):
                rtt = time.monotonic() - sent / 1000
                if 0 <= rtt < 60:
                    attachment.rtt = rtt

    async def _watch(
        self, live: LiveSession, ws: ServerConnection, attachment: Attachment
    ) -> Outcome:
        """Pings for the status bar; the rights re-check every RECHECK_INTERVAL."""
        loop = asyncio.get_running_loop()
        next_check = loop.time() + RECHECK_INTERVAL
        failures = 0
        try:
            while True:
                await asyncio.sleep(min(PING_INTERVAL, max(0.0, next_check - loop.time())))
                tunnel = live.link.tunnel
                device_rtt = tunnel.rtt if tunnel is not None else None
                await ws.send(
                    _json(
                        op="ping",
                        t=round(time.monotonic() * 1000, 3),
                        rtt_ms=_ms(attachment.rtt),
                        device_rtt_ms=_ms(device_rtt),
                    )
                )
                if loop.time() < next_check:
                    continue
                next_check = loop.time() + RECHECK_INTERVAL
                try:
                    rights = await asyncio.to_thread(self._recheck, live.admission)
                except SQLAlchemyError:
                    failures += 1
                    log.warning("! viewer re-check failed (%d in a row)", failures)
                    if failures >= MAX_RECHECK_FAILURES:
                        return Outcome.UNVERIFIABLE
                    continue
                except Refused as refused:
                    log.warning("= session %s: %s", live.admission.session_id, refused.code)
                    if refused.code == "session-not-joinable":
                        return Outcome.ENDED_ELSEWHERE
                    return Outcome.WITHDRAWN
                failures = 0
                await self._set_clipboard(live, ws, rights.clipboard)
        except ConnectionClosed:
            return Outcome.VIEWER_LEFT

    async def _set_clipboard(self, live: LiveSession, ws: ServerConnection, allowed: bool) -> None:
        """A changed clipboard right: the relay filters by it from now on, and the
        viewer and the device (which enforces it too) are told."""
        if allowed == live.clipboard:
            return
        live.clipboard = allowed
        log.info(
            "= session %s: clipboard %s",
            live.admission.session_id,
            "granted" if allowed else "withdrawn",
        )
        await live.channel.send(wire.Rights(allowed).encode())
        await ws.send(_json(op="rights", clipboard=allowed))

    def _recheck(self, admission: Admission) -> desktop.ViewerRights:
        with session_scope(self._sessions) as session:
            return desktop.recheck_viewer(session, admission)


def _first_outcome(done: set[asyncio.Task[Outcome]]) -> Outcome:
    for task in done:
        if not task.cancelled() and task.exception() is None:
            return task.result()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("! viewer task failed", exc_info=task.exception())
    return Outcome.VIEWER_LEFT


def _channel_outcome(exc: ChannelError) -> Outcome:
    return Outcome.DEVICE_GONE if isinstance(exc, TunnelClosedError) else Outcome.SESSION_OVER


def _json(**fields: Any) -> str:
    return json.dumps(fields, separators=(",", ":"))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _offers(request: Request, protocol: str) -> bool:
    try:
        offered = [
            proto
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for proto in parse_subprotocol(value)
        ]
    except InvalidHeader:
        return False
    return protocol in offered
