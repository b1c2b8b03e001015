"""Desktop sessions on the agent: consent, the device's windows, the stream.

Registered with the agent's `Registry` (:meth:`DesktopService.register`), it speaks the
agent's side of `protocol.desktop` (the contract, with every message's fields):

* on every link, event ``desktop.policy``: the device's own consent setting;
* action ``desktop.request``: answered ``prompting`` at once, or ``accepted`` when the
  device's policy asks for no consent;
* action ``desktop.answer``: a site contact's answer from the portal (the portal applied
  the four-eyes rule); ``forbidden`` unless the policy allows it, and for an answer
  named for the requester;
* action ``desktop.end``: the portal ends a session (or withdraws a request);
* channel kind ``desktop``: the viewer, joined by the relay. Refused FORBIDDEN unless
  `SessionBook.join` agrees. The clipboard right (and the relay's later
  `desktop.wire.Rights`) is enforced here too (`agent.desktop.clipboard`).

Every state change is reported as ``{"op": "event", "name": "desktop.state", ...}``
on the control channel (`Registry.send_event`) and written to the local audit log, in
order, by one outbox task. Deadlines (consent timeout, join window, session length,
idle) and local answers (`answers`) are handled by a watcher task that exists only
while some session is live: an idle agent does no desktop work at all.

No screen source, cursor source or input sink exists before a viewer joined an
accepted session: only the ``desktop`` channel handler creates them, after the book
said yes, and a view-only session gets a `ViewOnly` sink (no X input connection);
likewise no clipboard backend exists without the clipboard right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from agent.config import AgentConfig
from agent.control import InstructionError, Registry
from desktop import wire
from desktop.capture import CaptureError, MssSource, ScreenSource
from desktop.clipboard import ClipboardFactory, x11_clipboard
from desktop.cursor import CursorSource, XCursorSource
from desktop.inject import InputPump, InputSink, ViewOnly, XTestSink
from desktop.pacing import PacerSettings
from desktop.streamer import Streamer, StreamerSettings
from desktop.x11 import X11Error
from protocol.desktop import (
    ACTION_ANSWER,
    ACTION_END,
    ACTION_REQUEST,
    CHANNEL_KIND,
    EVENT_POLICY,
    EVENT_STATE,
    ConsentAnswer,
    Decision,
    EndReason,
    EndRequest,
    JoinMeta,
    Mode,
    PolicyReport,
    RequestReply,
    SessionRequest,
    State,
    StateReply,
    StateReport,
)
from protocol.envelope import MessageError
from tunnel import ErrorCode, Priority
from tunnel.aio import Channel, ChannelError, IncomingChannel

from .answers import POLL_INTERVAL, Answer, AnswerBox, answers_dir
from .clipboard import SessionClipboard
from .policy import (
    DesktopPolicy,
    Refusal,
    Session,
    SessionBook,
    desktop_enabled,
    resolve_display,
)
from .prompt import (
    INDICATOR_APP,
    PROMPT_APP,
    WindowProgram,
    child_environment,
    indicator_request,
    prompt_request,
)

logger = logging.getLogger(__name__)

AUDIT_KIND: Final = "desktop"

CHANNEL_WINDOW: Final = wire.MAX_MESSAGE
"""Receive window and largest message we take from the viewer: the wire's limit (4 MiB,
within the tunnel's MAX_WINDOW of 16 MiB). Viewer input is small; what we buffer is
bounded by this whatever the viewer sends."""

DRAIN_POLL: Final = 0.005
"""``ready()`` checks ``Channel.queued_bytes`` this often while an update drains (the
Channel API has no drained-wait); only while streaming, and 5 ms is well under a frame."""

MAX_OUTBOX: Final = 256
"""Reports waiting for the audit log and the relay; beyond this the oldest are dropped
(logged): a dead link or a stuck disk must not grow memory."""

CLOSE_WAIT: Final = 5.0
"""How long `aclose` waits for streams, windows and reports to finish."""

INPUT_TYPES: Final = (wire.PointerEvent, wire.WheelEvent, wire.KeyEvent)


class AuditSink(Protocol):
    """The local audit log (`agent.audit.AuditLog` has this shape)."""

    def append(self, kind: str, outcome: str = "ok", **detail: Any) -> Any: ...


Report = Callable[..., Awaitable[bool]]


@dataclass(slots=True)
class _Devices:
    """What a joined session captures with and injects into; closed after the stream."""

    source: ScreenSource
    cursor: CursorSource | None
    sink: InputSink

    def close_capture(self) -> None:
        self.source.close()
        if self.cursor is not None:
            self.cursor.close()


def _xtest_sink(display: str) -> InputSink:
    return XTestSink(display, disable_autorepeat=True)


def _optional_cursor(display: str) -> CursorSource | None:
    try:
        return XCursorSource(display)
    except X11Error as exc:
        logger.warning("! no cursor for the viewer: %s", exc)
        return None


class DesktopService:
    """See the module docstring. `register`, and `aclose` when the agent stops."""

    def __init__(
        self,
        policy: DesktopPolicy,
        answers: AnswerBox,
        *,
        settings: StreamerSettings | None = None,
        audit: AuditSink | None = None,
        source_factory: Callable[[str], ScreenSource] = MssSource,
        sink_factory: Callable[[str], InputSink] = _xtest_sink,
        cursor_factory: Callable[[str], CursorSource | None] = _optional_cursor,
        clipboard_factory: ClipboardFactory = x11_clipboard,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.book = SessionBook(policy)
        self.answers = answers
        self._settings = settings or StreamerSettings()
        self._audit = audit
        self._source_factory = source_factory
        self._sink_factory = sink_factory
        self._cursor_factory = cursor_factory
        self._clipboard_factory = clipboard_factory
        self._environ = child_environment(environ or {})
        self._clock = clock
        self._report: Report | None = None
        self._prompts: dict[str, WindowProgram] = {}
        self._indicators: dict[str, WindowProgram] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self._streams: dict[str, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._outbox: deque[tuple[str, dict[str, Any], bool]] = deque()
        self._sender: asyncio.Task[None] | None = None

    @property
    def watching(self) -> bool:
        """Whether the watcher runs (only while a session is live: no work when idle)."""
        return self._watcher is not None and not self._watcher.done()

    def register(self, registry: Registry) -> None:
        """Add the actions and the ``desktop`` channel kind; create the answer drop."""
        try:
            self.answers.prepare()
        except OSError as exc:  # sessions still work; only the local command does not
            logger.error("! no local answers: cannot create %s: %s", self.answers.directory, exc)
        registry.add_action(ACTION_REQUEST, self._on_request)
        registry.add_action(ACTION_ANSWER, self._on_answer)
        registry.add_action(ACTION_END, self._on_end)
        registry.add_channel(CHANNEL_KIND, self._on_channel)
        registry.on_link.append(self._announce_policy)
        self._report = registry.send_event

    async def aclose(self) -> None:
        """End every live session (``agent-stopping``), close the windows, flush reports."""
        for session in self.book.live:
            self._end(session.id, EndReason.AGENT_STOPPING)
        waits = [*self._streams.values(), *self._tasks, *([self._sender] if self._sender else [])]
        if waits:
            await asyncio.wait(waits, timeout=CLOSE_WAIT)
        for task in (self._watcher, self._sender, *self._tasks):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._watcher, self._sender) if t), return_exceptions=True
        )

    async def _announce_policy(self) -> None:
        """On every link: the device's consent setting, so the portal shows it before
        anyone asks for a session (the relay stores it; the agent still decides)."""
        policy = self.policy
        assert self._report is not None
        report = PolicyReport(
            policy.consent_required, policy.consent_timeout_s, policy.allow_remote_consent
        )
        await self._report(EVENT_POLICY, **report.to_json())

    # -- instructions -------------------------------------------------------------------

    async def _on_request(self, instruction: dict[str, Any]) -> dict[str, Any]:
        """Answer at once; the decision comes later as events. The device's policy sets
        the consent timeout (R31)."""
        now = self._clock()
        try:
            req = SessionRequest.parse(instruction)
            session, changes = self.book.request(
                req.session_id, req.mode, req.requester, req.reason, now
            )
        except (MessageError, Refusal) as exc:
            self._note("request-refused", error=exc.code, session_id=_raw_id(instruction))
            raise InstructionError(exc.code, exc.message) from None
        self._note(
            "requested",
            session_id=req.session_id,
            mode=str(req.mode),
            user=req.requester.user,
            name=req.requester.name,
            organisation=req.requester.organisation,
            reason=req.reason,
        )
        logger.info(
            "< desktop request %s (%s) from %s (%s)%s",
            req.session_id,
            req.mode,
            req.requester.name,
            req.requester.organisation or req.requester.user,
            f": answer on {self.policy.display} or with `outlink-agent desktop accept|deny "
            f"{req.session_id}`"
            if session.state is State.PROMPTING
            else "",
        )
        self._apply(changes)
        self._watch()
        if session.state is State.PROMPTING:
            self._spawn(self._run_prompt(session), f"desktop-prompt-{session.id[:8]}")
            reply = RequestReply(
                State.PROMPTING, self.policy.consent_timeout_s, self.policy.allow_remote_consent
            )
            return reply.to_json()
        return RequestReply(State.ACCEPTED).to_json()

    async def _on_answer(self, instruction: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = ConsentAnswer.parse(instruction)
            changes = self.book.answer(
                answer.session_id,
                answer.decision is Decision.ACCEPT,
                self._clock(),
                site_contact=answer.user,
            )
        except (MessageError, Refusal) as exc:
            self._note("remote-answer-refused", error=exc.code, session_id=_raw_id(instruction))
            raise InstructionError(exc.code, exc.message) from None
        self._apply(changes)
        return StateReply(changes[0].state).to_json()

    async def _on_end(self, instruction: dict[str, Any]) -> dict[str, Any]:
        try:
            end = EndRequest.parse(instruction)
            changes = self.book.end(end.session_id, EndReason.BY_PORTAL, self._clock())
        except (MessageError, Refusal) as exc:
            raise InstructionError(exc.code, exc.message) from None
        self._apply(changes)
        return StateReply(State.ENDED).to_json()

    # -- state changes ------------------------------------------------------------------

    def _apply(self, changes: list[StateReport]) -> None:
        """Report each change and make the device match it: no prompt once decided, an
        indicator while accepted or started, the stream stopped once over."""
        for change in changes:
            self._queue(str(change.state), change.to_json(), report=True)
            sid = change.session_id
            if change.state is not State.STARTED:
                self._close_window(self._prompts, sid)
            if change.state is State.ACCEPTED:
                session = self.book.get(sid)
                assert session is not None
                self._spawn(self._run_indicator(session), f"desktop-indicator-{sid[:8]}")
            elif change.state in (State.DENIED, State.TIMEOUT, State.ENDED):
                self._close_window(self._indicators, sid)
                stop = self._stops.get(sid)
                if stop is not None:
                    stop.set()
        self._wake.set()

    def _end(self, session_id: str, reason: str) -> None:
        """End a session if it is still live (several ends may race; the first wins)."""
        try:
            changes = self.book.end(session_id, reason, self._clock())
        except Refusal:
            return
        self._apply(changes)

    # -- the device's windows -----------------------------------------------------------

    async def _run_prompt(self, session: Session) -> None:
        left = (session.deadline or 0.0) - self._clock()
        try:
            program = await WindowProgram.start(
                PROMPT_APP, prompt_request(session, left), self.policy.display, self._environ
            )
        except OSError as exc:
            logger.warning(
                "! cannot show the consent prompt on %s (%s); answer with "
                "`outlink-agent desktop accept|deny %s`",
                self.policy.display,
                exc,
                session.id,
            )
            return
        if session.state is not State.PROMPTING:  # decided while the program started
            await program.close()
            return
        self._prompts[session.id] = program
        message = await program.read()
        if self._prompts.get(session.id) is not program:
            return  # closed by us: decided elsewhere
        del self._prompts[session.id]
        await program.close()
        answer = message.get("answer") if message else None
        if answer not in ("accept", "deny"):
            logger.warning("! consent prompt for %s closed without an answer", session.id)
            return
        try:
            self._apply(self.book.answer(session.id, answer == "accept", self._clock()))
        except Refusal as exc:
            logger.info("= prompt answer for %s too late: %s", session.id, exc.message)

    async def _run_indicator(self, session: Session) -> None:
        try:
            program = await WindowProgram.start(
                INDICATOR_APP, indicator_request(session), self.policy.display, self._environ
            )
        except OSError as exc:
            logger.error("! cannot show the session indicator: %s", exc)
            self._end(session.id, EndReason.INDICATOR_LOST)
            return
        if session.state not in (State.ACCEPTED, State.STARTED):
            await program.close()
            return
        self._indicators[session.id] = program
        message = await program.read()
        if self._indicators.get(session.id) is not program:
            return  # closed by us: the session is over
        del self._indicators[session.id]
        await program.close()
        if message is not None and message.get("event") == "end":
            logger.info("< session %s ended by the customer (indicator)", session.id)
            self._end(session.id, EndReason.BY_CUSTOMER)
        else:
            logger.error("! session indicator for %s went away; ending the session", session.id)
            self._end(session.id, EndReason.INDICATOR_LOST)

    def _close_window(self, windows: dict[str, WindowProgram], session_id: str) -> None:
        program = windows.pop(session_id, None)
        if program is not None:
            self._spawn(program.close(), f"desktop-close-{program.what}")

    # -- deadlines and local answers ----------------------------------------------------

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_loop(), name="desktop-watch")

    async def _watch_loop(self) -> None:
        """While a session is live: fire deadlines, take local answers. Then return."""
        while self.book.live:
            deadline = self.book.next_deadline()
            wait = POLL_INTERVAL
            if deadline is not None:
                wait = min(wait, deadline - self._clock())
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            for answer in await asyncio.to_thread(self.answers.take):
                result = self._local_answer(answer)
                await asyncio.to_thread(self.answers.reply, answer.nonce, result)
            self._apply(self.book.tick(self._clock()))

    def _local_answer(self, answer: Answer) -> dict[str, Any]:
        """``outlink-agent desktop accept|deny|end``: the person at the device. ``end``
        on a request still prompting is a denial."""
        now = self._clock()
        session = self.book.get(answer.session_id)
        try:
            if answer.action == "end" and not (session and session.state is State.PROMPTING):
                changes = self.book.end(answer.session_id, EndReason.BY_CUSTOMER, now)
            else:
                changes = self.book.answer(answer.session_id, answer.action == "accept", now)
        except Refusal as exc:
            self._note("local-answer-refused", session_id=answer.session_id, error=exc.code)
            return {"ok": False, "error": exc.code, "message": exc.message}
        logger.info("< local %s for session %s", answer.action, answer.session_id)
        self._apply(changes)
        return {"ok": True, "state": str(changes[0].state)}

    # -- the viewer's channel -----------------------------------------------------------

    async def _on_channel(self, request: IncomingChannel) -> None:
        meta = request.meta
        try:
            join = JoinMeta.parse(meta)
            session_id, mode, clipboard = join.session_id, join.mode, join.clipboard
            changes = self.book.join(session_id, mode, join.viewer, self._clock())
        except (MessageError, Refusal) as exc:
            logger.warning("! desktop channel refused: %s", exc.message)
            self._note("join-refused", session_id=_raw_id(meta), error=exc.code)
            request.refuse(ErrorCode.FORBIDDEN, "no desktop session to join")
            return
        self._stops[session_id] = asyncio.Event()
        try:
            channel = request.accept(
                {"session_id": session_id, "mode": str(mode)},
                priority=Priority.DESKTOP,
                window=CHANNEL_WINDOW,
                max_message=CHANNEL_WINDOW,
            )
        except ChannelError:
            self._apply(changes)
            self._end(session_id, EndReason.CHANNEL_RESET)
            self._stops.pop(session_id, None)
            return
        self._apply(changes)
        session = self.book.get(session_id)
        assert session is not None
        task = asyncio.current_task()
        assert task is not None
        self._streams[session_id] = task
        try:
            await self._serve(session, channel, mode, clipboard)
        finally:
            self._streams.pop(session_id, None)
            self._stops.pop(session_id, None)

    async def _serve(self, session: Session, channel: Channel, mode: Mode, clipboard: bool) -> None:
        """Stream to the viewer and replay its input until the session ends, whoever
        ends it; then release everything and tell the viewer how it ended."""
        stop = self._stops[session.id]
        try:
            devices = await asyncio.to_thread(self._open_devices, mode)
        except (CaptureError, X11Error, OSError) as exc:
            logger.error("! cannot stream the display %s: %s", self.policy.display, exc)
            self._finish(session, channel, EndReason.STREAM_FAILED, ErrorCode.INTERNAL_ERROR)
            return
        pump = InputPump(devices.sink)

        async def send(data: bytes) -> None:
            await channel.send(data)
            self.book.sent(session.id, len(data))

        async def drained() -> None:
            while channel.queued_bytes:  # noqa: ASYNC110 - no drained-wait on Channel
                await asyncio.sleep(DRAIN_POLL)

        async def send_clipboard(text: str) -> None:
            await send(wire.Clipboard(text).encode())

        streamer = Streamer(
            devices.source, send, drained, cursor=devices.cursor, settings=self._settings
        )
        clip = SessionClipboard(
            session.id,
            self.policy.display,
            self._clipboard_factory,
            allowed=clipboard,
            control=mode is Mode.CONTROL,
            send=send_clipboard,
            note=self._note,
        )
        streaming = asyncio.create_task(streamer.run(), name=f"desktop-stream-{session.id[:8]}")
        reading = asyncio.create_task(
            self._read_viewer(session, channel, streamer, pump, clip),
            name=f"desktop-input-{session.id[:8]}",
        )
        stopping = asyncio.create_task(stop.wait(), name=f"desktop-stop-{session.id[:8]}")
        clipping = asyncio.create_task(clip.run(), name=f"desktop-clipboard-{session.id[:8]}")
        tasks = (streaming, reading, stopping)
        # What stands if this task is cancelled: the tunnel is closing under us.
        reason: str | None = EndReason.CHANNEL_RESET
        code = ErrorCode.CANCELLED
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reason, code = _outcome(streaming, reading, stopping)
        finally:
            for task in (*tasks, clipping):
                task.cancel()
            await asyncio.gather(*tasks, clipping, return_exceptions=True)
            if not clipping.cancelled() and clipping.exception() is not None:
                logger.error("! the clipboard failed", exc_info=clipping.exception())
            await pump.aclose()  # lets go of held keys and buttons, restores autorepeat
            await asyncio.to_thread(devices.close_capture)
            self._finish(session, channel, reason, code)

    def _finish(
        self, session: Session, channel: Channel, reason: str | None, code: ErrorCode
    ) -> None:
        """End the session (unless already ended: ``reason`` None) and the channel."""
        if reason is not None:
            self._end(session.id, reason)
        if reason == EndReason.VIEWER_LEFT:
            self._spawn(channel.close(), "desktop-close-channel")
        else:
            channel.reset(code, session.end_reason or reason or "")

    def _open_devices(self, mode: Mode) -> _Devices:
        """Worker thread: connect to the display; an input sink only for control."""
        display = self.policy.display
        source = self._source_factory(display)
        try:
            cursor = self._cursor_factory(display)
            sink = self._sink_factory(display) if mode is Mode.CONTROL else ViewOnly()
        except BaseException:
            source.close()
            raise
        return _Devices(source, cursor, sink)

    async def _read_viewer(
        self,
        session: Session,
        channel: Channel,
        streamer: Streamer,
        pump: InputPump,
        clip: SessionClipboard,
    ) -> str:
        """Apply the viewer's messages; returns why it stopped (an end reason)."""
        view_only = isinstance(pump.sink, ViewOnly)
        try:
            async for data in channel:
                message = wire.decode_viewer_message(data)
                dropped = 0
                if isinstance(message, INPUT_TYPES):
                    monitor = streamer.monitor
                    if view_only:
                        dropped = 1
                    if monitor is not None:
                        await pump.handle(message, monitor)
                        if not view_only:
                            streamer.poke()
                elif isinstance(message, wire.RefreshRequest):
                    streamer.request_refresh()
                elif isinstance(message, wire.SelectMonitor):
                    if not streamer.select_monitor(message.index):
                        logger.debug("< no monitor %d to select", message.index)
                elif isinstance(message, wire.StreamSettings):
                    streamer.apply(message)
                elif isinstance(message, wire.Clipboard):
                    await clip.from_viewer(message.text)
                else:
                    await clip.set_right(message.clipboard)
                self.book.received(session.id, len(data), self._clock(), dropped=dropped)
        except wire.WireError as exc:
            logger.warning("! session %s: bad message from the viewer: %s", session.id, exc)
            return EndReason.VIEWER_PROTOCOL_ERROR
        except ChannelError:
            return EndReason.CHANNEL_RESET
        return EndReason.VIEWER_LEFT

    # -- reports --------------------------------------------------------------------------

    def _note(self, outcome: str, **detail: Any) -> None:
        """An audit line that is not a state change (nothing goes to the relay)."""
        self._queue(outcome, detail, report=False)

    def _queue(self, outcome: str, detail: dict[str, Any], *, report: bool) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            dropped = self._outbox.popleft()
            logger.error("! desktop report dropped (outbox full): %s", dropped[0])
        self._outbox.append((outcome, detail, report))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_reports(), name="desktop-reports")

    async def _send_reports(self) -> None:
        """Audit log first, then the relay, one at a time: the order is the order of
        the transitions."""
        while self._outbox:
            outcome, detail, report = self._outbox.popleft()
            if self._audit is not None:
                try:
                    await asyncio.to_thread(self._audit.append, AUDIT_KIND, outcome, **detail)
                except OSError as exc:
                    logger.error("! desktop audit line not written: %s", exc)
            else:
                logger.info("= audit desktop %s %s", outcome, detail)
            if not report:
                continue
            sent = self._report is not None and await self._report(EVENT_STATE, **detail)
            if not sent:
                logger.warning(
                    "! %s %s not reported: no link to the relay", EVENT_STATE, detail.get("state")
                )

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def service_from_config(
    config: AgentConfig, environ: Mapping[str, str], *, audit: AuditSink | None = None
) -> DesktopService | None:
    """The desktop service the configuration asks for, or ``None`` (logged) when off."""
    d = config.desktop
    enabled, why = desktop_enabled(d.enabled, d.display, environ, _x_server_running)
    if not enabled:
        logger.info("= desktop sessions off: %s", why)
        return None
    policy = DesktopPolicy(
        consent_required=d.consent_required,
        consent_timeout_s=d.consent_timeout_s,
        allow_remote_consent=d.allow_remote_consent,
        max_session_s=d.max_session_s,
        idle_timeout_s=d.idle_timeout_s,
        display=resolve_display(d.display, environ),
    )
    logger.info(
        "= desktop sessions on (%s): display %s, consent %s, remote consent %s",
        why,
        policy.display,
        "required" if policy.consent_required else "OFF",
        "allowed" if policy.allow_remote_consent else "not allowed",
    )
    settings = StreamerSettings(pacer=PacerSettings(max_fps=d.max_fps, cpu_budget=d.cpu_budget))
    return DesktopService(
        policy,
        AnswerBox(answers_dir(config.data_dir)),
        settings=settings,
        audit=audit,
        environ=environ,
    )


def _x_server_running(display: str) -> bool:
    """Whether the local X server ``display`` (":N") has its socket."""
    match = re.fullmatch(r":(\d+)(\.\d+)?", display)
    return match is not None and Path(f"/tmp/.X11-unix/X{match[1]}").exists()  # noqa: S108


def _raw_id(fields: Mapping[str, Any]) -> str:
    """A session id as received, for an audit line about refusing it (bounded)."""
    return str(fields.get("session_id"))[:64]


def _outcome(
    streaming: asyncio.Task[Any], reading: asyncio.Task[str], stopping: asyncio.Task[Any]
) -> tuple[str | None, ErrorCode]:
    """Why a stream stopped: (end reason or None if the book ended it, reset code)."""
    if stopping.done():
        return None, ErrorCode.CANCELLED
    if reading.done():
        exc = reading.exception()
        if exc is None:
            reason = reading.result()
            protocol_error = reason == EndReason.VIEWER_PROTOCOL_ERROR
            return reason, ErrorCode.BAD_REQUEST if protocol_error else ErrorCode.CANCELLED
        logger.error("! input injection failed", exc_info=exc)
        return EndReason.STREAM_FAILED, ErrorCode.INTERNAL_ERROR
    exc = streaming.exception()
    if isinstance(exc, ChannelError):
        return EndReason.CHANNEL_RESET, ErrorCode.CANCELLED
    logger.error("! the stream failed", exc_info=exc)
    return EndReason.STREAM_FAILED, ErrorCode.INTERNAL_ERROR
