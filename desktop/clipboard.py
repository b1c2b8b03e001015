"""The device's clipboard during a session: text from the viewer is pasteable on the
device, text copied on the device goes to the viewer.

:class:`ClipboardBackend` is what the agent sees; :class:`X11Clipboard` implements it
(a Windows backend would use the clipboard listener API). Whether a backend exists at
all is the agent's decision (a session without the clipboard right gets none: nothing
is read from or written to the device's clipboard).

On X11 the clipboard is a *selection*: whoever owns it answers other programs' requests
for its contents. :class:`X11Clipboard` therefore runs on a thread of its own, with its
own display connection and an unmapped window, for as long as the session lasts:

* :meth:`~X11Clipboard.put` makes the window the owner of ``CLIPBOARD`` *and*
  ``PRIMARY``, so both Ctrl+V and a middle click paste the text, and answers
  ``SelectionRequest`` for ``TARGETS``, ``UTF8_STRING``, ``STRING`` (Latin-1, other
  characters as ``?``) and ``TEXT`` (as UTF-8) until another program takes the
  selection;
* with an ``on_copy`` callback it watches ``CLIPBOARD`` only (XFIXES
  ``SetSelectionOwnerNotify``), fetches each new owner's text as ``UTF8_STRING`` (or
  ``STRING``) and passes it on. A program that copies again while it still owns the
  clipboard (Tk does) tells the server nothing, so while another program owns it the
  text is also fetched every :data:`POLL_INTERVAL` and passed on when it changed.
  ``PRIMARY`` is not watched: it changes with every highlight, and a highlight is not a
  decision to share. Only text copied during the session crosses; what was on the
  clipboard when watching began stays on the device.

Text is bounded by :data:`MAX_TEXT` both ways; there is no INCR transfer (see there).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, Protocol

from Xlib import X, Xatom
from Xlib.error import ConnectionClosedError, XError
from Xlib.ext import xfixes
from Xlib.protocol import event as xevent
from Xlib.protocol import request

from . import wire
from .x11 import X11Error, open_display

logger = logging.getLogger(__name__)

MAX_TEXT: Final = 255 * 1024
"""Clipboard text on X11, in UTF-8 bytes, both ways. The selection is handed over in
one ChangeProperty request (no INCR protocol), and a core X request is at most 65535
units of 4 bytes (python-xlib does not use BIG-REQUESTS): 262140 bytes minus the
request's 24-byte header. 255 KiB stays below that and below the wire's
``MAX_CLIPBOARD``; larger copies on the device are not sent (logged)."""

POLL_INTERVAL: Final = 1.0
"""Seconds between fetches of another program's clipboard text (see the module
docstring): one round trip to that program a second, only during a session with the
clipboard right, and a copy reaches the viewer within a second even from Tk."""

CLOSE_WAIT: Final = 5.0
"""How long :meth:`X11Clipboard.close` waits for the thread to give up the selections."""

_TARGETS: Final = ("TARGETS", "UTF8_STRING", "STRING", "TEXT")


class Report(enum.Enum):
    """What becomes of the clipboard text being fetched."""

    ALWAYS = "always"  # a program just copied
    IF_CHANGED = "if-changed"  # a poll: the same program may have copied again
    NEVER = "never"  # what was there when watching began


OnCopy = Callable[[str], None]
"""Called on the backend's own thread with text copied on the device."""


class ClipboardBackend(Protocol):
    """The device's clipboard for one session."""

    max_bytes: int
    """Largest text (UTF-8 bytes) this backend hands over in either direction."""

    def put(self, text: str) -> bool:
        """Make ``text`` the device's clipboard; whether it is (False: too large, or
        another program would not let go). Thread-safe; blocks for a round trip."""
        ...

    def close(self) -> None:
        """Stop watching, give the selections up, release the display. Idempotent."""
        ...


ClipboardFactory = Callable[[str, OnCopy | None], ClipboardBackend]
"""``factory(display, on_copy)``: a started backend; ``on_copy=None`` watches nothing."""


class X11Clipboard:
    """See the module docstring. Raises :class:`~desktop.x11.X11Error` if the display
    cannot be used (no XFIXES when watching)."""

    def __init__(self, display: str, on_copy: OnCopy | None = None) -> None:
        self._d = open_display(display, require="XFIXES" if on_copy else None)
        try:
            self._atoms = {
                name: self._d.intern_atom(name)
                for name in (*_TARGETS, "CLIPBOARD", "INCR", "OUTLINK_CLIP")
            }
            root = self._d.screen().root
            self._window = root.create_window(-10, -10, 1, 1, 0, X.CopyFromParent)
            if on_copy is not None:
                self._d.xfixes_query_version()  # XFIXES needs the version handshake first
                self._d.xfixes_select_selection_input(
                    self._window, self._atoms["CLIPBOARD"], xfixes.XFixesSetSelectionOwnerNotifyMask
                )
            self._owner_event = (
                self._d.query_extension("XFIXES").first_event + xfixes.XFixesSelectionNotify
                if on_copy
                else None
            )
            self._d.set_error_handler(self._x_error)
            self._d.flush()
        except (XError, OSError) as exc:
            self._d.close()
            raise X11Error(f"cannot set up the clipboard: {exc}") from exc
        self.max_bytes = min(
            MAX_TEXT, wire.MAX_CLIPBOARD, self._d.display.info.max_request_length * 4 - 32
        )
        self._on_copy = on_copy
        self._owned: bytes | None = None  # the text we serve while we own the selections
        self._converting: int | None = None  # the target asked of the owner, if any
        self._report: Report = Report.NEVER  # what to do with the text being fetched
        self._seen: bytes | None = None  # the last text fetched from another program
        self._foreign = False  # whether another program owns the clipboard
        self._puts: queue.SimpleQueue[tuple[str, Future[bool]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="desktop-clipboard", daemon=True)
        self._thread.start()

    def put(self, text: str) -> bool:
        done: Future[bool] = Future()
        if self._closed:
            return False
        self._puts.put((text, done))
        self._wake()
        try:
            return done.result(CLOSE_WAIT)
        except TimeoutError:
            return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake()
        self._thread.join(CLOSE_WAIT)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe wakes the thread all the same
            os.write(self._wake_w, b"\0")

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._on_copy is not None:
                owner = self._d.get_selection_owner(self._atoms["CLIPBOARD"])
                if owner not in (X.NONE, self._window):  # what is there stays unreported
                    self._foreign = True
                    self._ask(self._atoms["UTF8_STRING"], X.CurrentTime, Report.NEVER)
            next_poll = time.monotonic() + POLL_INTERVAL
            while not self._stop.is_set():
                while self._d.pending_events():
                    self._handle(self._d.next_event())
                now = time.monotonic()
                if self._foreign and now >= next_poll:
                    # An unanswered earlier fetch is given up: this one replaces it.
                    self._ask(self._atoms["UTF8_STRING"], X.CurrentTime, Report.IF_CHANGED)
                    next_poll = now + POLL_INTERVAL
                wait = max(0.0, next_poll - now) if self._foreign else None
                readable, _, _ = select.select([self._d.fileno(), self._wake_r], [], [], wait)
                if self._wake_r in readable:
                    os.read(self._wake_r, 4096)
                while not self._puts.empty():
                    text, done = self._puts.get_nowait()
                    done.set_result(self._own(text))
        except (XError, ConnectionClosedError, OSError) as exc:
            logger.error("! clipboard: the X connection failed: %s", exc)
        finally:
            while not self._puts.empty():
                self._puts.get_nowait()[1].set_result(False)
            with contextlib.suppress(XError, ConnectionClosedError, OSError):
                self._give_up()
            with contextlib.suppress(XError, ConnectionClosedError, OSError):
                self._d.close()

    def _give_up(self) -> None:
        """Release what we own and refuse every paste already routed to us.

        Closing the connection alone would drop a request that is in flight: the server
        tells no requestor when an owner vanishes, and a client such as xclip then
        waits for ever. After the release and a round trip, every request meant for us
        is in our queue; later ones find no owner and the server refuses them itself.
        """
        self._owned = None
        for selection in (self._atoms["CLIPBOARD"], Xatom.PRIMARY):
            if self._d.get_selection_owner(selection) == self._window:
                request.SetSelectionOwner(
                    display=self._d.display, window=X.NONE, selection=selection, time=X.CurrentTime
                )
        self._d.sync()
        while self._d.pending_events():
            ev = self._d.next_event()
            if ev.type == X.SelectionRequest:
                self._answer(ev)  # refused: nothing is owned any more
        self._d.flush()

    def _own(self, text: str) -> bool:
        data = text.encode("utf-8")
        if len(data) > self.max_bytes:
            logger.warning(
                "! clipboard: %d bytes from the viewer not set (max %d)", len(data), self.max_bytes
            )
            return False
        self._owned = data
        for selection in (self._atoms["CLIPBOARD"], Xatom.PRIMARY):
            self._window.set_selection_owner(selection, X.CurrentTime)
        owner = self._d.get_selection_owner(self._atoms["CLIPBOARD"])
        if owner != self._window:
            logger.warning("! clipboard: could not take the selection")
            self._owned = None
            return False
        logger.debug("= clipboard: owning %d bytes", len(data))
        return True

    def _handle(self, ev: Any) -> None:
        if ev.type == self._owner_event:  # python-xlib's event classes defy isinstance
            owner = getattr(ev.owner, "id", ev.owner)
            if ev.sub_code == xfixes.XFixesSetSelectionOwnerNotify:
                self._foreign = owner not in (X.NONE, self._window.id)
                if self._foreign:
                    self._ask(self._atoms["UTF8_STRING"], ev.selection_timestamp, Report.ALWAYS)
        elif ev.type == X.SelectionRequest:
            self._answer(ev)
        elif ev.type == X.SelectionClear:
            if ev.atom == self._atoms["CLIPBOARD"]:
                self._owned = None  # another program took it: nothing of ours to serve
        elif ev.type == X.SelectionNotify:
            self._received(ev)

    def _ask(self, target: int, when: int, report: Report) -> None:
        self._converting = target
        self._report = report
        self._window.convert_selection(
            self._atoms["CLIPBOARD"], target, self._atoms["OUTLINK_CLIP"], when
        )
        self._d.flush()

    def _received(self, ev: Any) -> None:
        target, self._converting = self._converting, None
        if target is None or self._on_copy is None:
            return
        if ev.property == X.NONE:
            if target == self._atoms["UTF8_STRING"]:
                self._ask(Xatom.STRING, ev.time, self._report)  # an older program: Latin-1
            return
        words = (self.max_bytes + 3) // 4
        prop = self._window.get_property(ev.property, X.AnyPropertyType, 0, words, delete=True)
        self._d.flush()
        if prop is None or prop.format != 8 or prop.property_type == self._atoms["INCR"]:
            logger.info("! clipboard: the device's copy is not plain text or too large")
            return
        if prop.bytes_after:
            logger.info("! clipboard: the device's copy is over %d bytes: not sent", self.max_bytes)
            return
        data = bytes(prop.value)
        changed, self._seen = data != self._seen, data
        if (
            len(data) > self.max_bytes
            or self._report is Report.NEVER
            or (self._report is Report.IF_CHANGED and not changed)
        ):
            return
        try:
            text = data.decode("utf-8") if target != Xatom.STRING else data.decode("latin-1")
        except UnicodeDecodeError:
            logger.info("! clipboard: the device's copy is not UTF-8: not sent")
            return
        logger.debug("< clipboard: %d bytes copied on the device", len(data))
        self._on_copy(text)

    def _answer(self, ev: Any) -> None:
        """Serve one paste: the text in the requestor's property, then SelectionNotify."""
        prop = ev.property or ev.target  # obsolete clients name no property
        data = self._owned
        a = self._atoms
        if data is None:
            prop = X.NONE
        elif ev.target == a["TARGETS"]:
            ev.requestor.change_property(prop, Xatom.ATOM, 32, [a[t] for t in _TARGETS])
        elif ev.target in (a["UTF8_STRING"], a["TEXT"]):
            ev.requestor.change_property(prop, a["UTF8_STRING"], 8, data)
        elif ev.target == Xatom.STRING:
            latin = data.decode("utf-8").encode("latin-1", errors="replace")
            ev.requestor.change_property(prop, Xatom.STRING, 8, latin)
        else:
            prop = X.NONE
        ev.requestor.send_event(
            xevent.SelectionNotify(
                time=ev.time,
                requestor=ev.requestor,
                selection=ev.selection,
                target=ev.target,
                property=prop,
            ),
            event_mask=0,
        )
        self._d.flush()
        logger.debug("> clipboard: paste request (target %d) answered", ev.target)

    def _x_error(self, error: XError, request: Any) -> None:
        """Asynchronous X errors (a requestor whose window vanished mid-paste): logged;
        the clipboard goes on."""
        logger.info("! clipboard: X error %s", error)


def x11_clipboard(display: str, on_copy: OnCopy | None) -> ClipboardBackend:
    """The :data:`ClipboardFactory` for X11."""
    return X11Clipboard(display, on_copy)
