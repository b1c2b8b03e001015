"""Input injection: a viewer's pointer, wheel and keys replayed on the device.

:class:`InputSink` is the seam a platform backend implements (a Windows backend would
use ``SendInput``); :class:`XTestSink` is the X11 one, through the XTEST extension
with ``python-xlib``; :class:`ViewOnly` injects nothing and is what a view-only
session gets, so "no input" does not depend on a viewer behaving.

Keys arrive as X11 keysyms (what the viewer's key *produced*, like RFB). The X sink
finds a keycode producing that keysym at shift level 0 or 1 and presses Shift for it,
or releases a held Shift, only around that one press, so ``!`` types ``!`` and ``1``
typed while Shift is held still types ``1`` (the viewer's layout need not match the
device's). A keysym the keymap lacks (``é`` on a US map) is bound to a spare keycode
-- one with no symbols -- for as long as needed, like ``xdotool``: spare codes are
reused least-recently-used first and every binding is undone by :meth:`release_all`
or :meth:`close`. Caps/Shift Lock from the viewer are ignored: the keysyms already
carry the case, and toggling the device's lock would invert it.

Every X sink call ends with a round trip (``XSync``), not just a flush: fed a burst
of XTEST requests without waiting, Xvfb lost key events or left a key down (then
server autorepeat ran away with it) in 2 of 10 runs of a 50-key string; with the
round trip, none in hundreds. It costs ~0.2 ms and gives natural backpressure when a
network stall delivers a burst of input at once. Sinks therefore block briefly, so
the :class:`InputPump` runs them on one worker thread, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Protocol

from Xlib import X
from Xlib.ext import xtest

from .capture import Monitor
from .wire import KeyEvent, PointerEvent, WheelEvent
from .x11 import X11Error, open_display

logger = logging.getLogger(__name__)

SHIFT_KEYSYMS: Final = frozenset({0xFFE1, 0xFFE2})  # Shift_L, Shift_R
LOCK_KEYSYMS: Final = frozenset({0xFFE5, 0xFFE6})  # Caps_Lock, Shift_Lock: ignored (see above)
SHIFT_L: Final = 0xFFE1


def is_modifier(keysym: int) -> bool:
    """Shift/Control/Meta/Alt/Super/Hyper, ISO level shifts and Mode_switch: keys that
    are pressed for their own sake, never wrapped in a Shift fix-up."""
    return 0xFFE1 <= keysym <= 0xFFEE or 0xFE01 <= keysym <= 0xFE13 or keysym == 0xFF7E


class InputSink(Protocol):
    """Where input goes. Coordinates are desktop (root window) pixels; ``buttons`` is
    the wire's mask (bit 0 left, 1 middle, 2 right). One thread at a time."""

    def pointer(self, x: int, y: int, buttons: int) -> None: ...

    def wheel(self, dx: int, dy: int) -> None:
        """``dy > 0`` scrolls down, ``dx > 0`` right, in notches."""
        ...

    def key(self, keysym: int, down: bool) -> None: ...

    def release_all(self) -> None:
        """Let go of every button and key this sink holds (session end, viewer gone)."""
        ...

    def close(self) -> None: ...


class ViewOnly:
    """An :class:`InputSink` that injects nothing and counts what it dropped."""

    def __init__(self) -> None:
        self.dropped = 0

    def pointer(self, x: int, y: int, buttons: int) -> None:
        self.dropped += 1

    def wheel(self, dx: int, dy: int) -> None:
        self.dropped += 1

    def key(self, keysym: int, down: bool) -> None:
        self.dropped += 1

    def release_all(self) -> None:
        pass

    def close(self) -> None:
        pass


class XTestSink:
    """:class:`InputSink` on the X server ``display`` (default ``$DISPLAY``) via XTEST.

    ``disable_autorepeat`` switches the server's key autorepeat off while the sink
    lives (restored by :meth:`close`), as x11vnc does: viewers send their own repeats,
    and server repeats would run away while a key release is delayed on the network.
    """

    def __init__(self, display: str | None = None, *, disable_autorepeat: bool = False) -> None:
        self._d = open_display(display, require="XTEST")
        self._root = self._d.screen().root
        self._buttons = 0
        self._held: dict[int, int] = {}  # keysym -> keycode we pressed for it
        self._bound: OrderedDict[int, int] = OrderedDict()  # keysym -> spare keycode, LRU
        info = self._d.display.info
        first, count = info.min_keycode, info.max_keycode - info.min_keycode + 1
        mapping = self._d.get_keyboard_mapping(first, count)
        self._spare = [first + i for i, syms in enumerate(mapping) if not any(syms)]
        self._autorepeat: int | None = None
        if disable_autorepeat:
            self._autorepeat = self._d.get_keyboard_control().global_auto_repeat
            self._d.change_keyboard_control(auto_repeat_mode=X.AutoRepeatModeOff)
            self._d.sync()
        logger.debug("= xtest sink on %s, %d spare keycodes", display, len(self._spare))

    # -- pointer ---------------------------------------------------------------------

    def pointer(self, x: int, y: int, buttons: int) -> None:
        xtest.fake_input(self._d, X.MotionNotify, x=x, y=y, root=self._root)
        changed = buttons ^ self._buttons
        for bit, button in ((1, 1), (2, 2), (4, 3)):
            if changed & bit:
                kind = X.ButtonPress if buttons & bit else X.ButtonRelease
                xtest.fake_input(self._d, kind, button)
        self._buttons = buttons
        self._d.sync()

    def wheel(self, dx: int, dy: int) -> None:
        for button, steps in ((5 if dy > 0 else 4, abs(dy)), (7 if dx > 0 else 6, abs(dx))):
            for _ in range(steps):
                xtest.fake_input(self._d, X.ButtonPress, button)
                xtest.fake_input(self._d, X.ButtonRelease, button)
        self._d.sync()

    # -- keyboard --------------------------------------------------------------------

    def key(self, keysym: int, down: bool) -> None:
        if keysym in LOCK_KEYSYMS:
            return
        if not down:
            keycode = self._held.pop(keysym, None)
            if keycode is not None:  # else pressed before we started: not ours to release
                xtest.fake_input(self._d, X.KeyRelease, keycode)
                self._d.sync()
            return
        self._refresh_mapping()
        found = self._lookup(keysym)
        if found is None:
            logger.warning("! keysym %#x: not in the keymap and no spare keycode", keysym)
            return
        keycode, level = found
        shifts = [code for sym, code in self._held.items() if sym in SHIFT_KEYSYMS]
        if is_modifier(keysym) or (level == 1) == bool(shifts):
            xtest.fake_input(self._d, X.KeyPress, keycode)
        elif level == 1:  # needs Shift, none held: wrap this press in one
            shift = self._shift_keycode()
            xtest.fake_input(self._d, X.KeyPress, shift)
            xtest.fake_input(self._d, X.KeyPress, keycode)
            xtest.fake_input(self._d, X.KeyRelease, shift)
        else:  # must not be shifted, but the viewer holds Shift: lift it for this press
            for code in shifts:
                xtest.fake_input(self._d, X.KeyRelease, code)
            xtest.fake_input(self._d, X.KeyPress, keycode)
            for code in shifts:
                xtest.fake_input(self._d, X.KeyPress, code)
        self._held[keysym] = keycode
        self._d.sync()

    def _shift_keycode(self) -> int:
        found = self._lookup(SHIFT_L)
        if found is None:  # cannot happen with any real keymap
            raise X11Error("no keycode for Shift_L")
        return found[0]

    def _lookup(self, keysym: int) -> tuple[int, int] | None:
        """(keycode, shift level) producing ``keysym``, binding a spare code if needed."""
        held = set(self._held.values())
        shifted = any(sym in SHIFT_KEYSYMS for sym in self._held)
        candidates = [(c, i) for c, i in self._d.keysym_to_keycodes(keysym) if i in (0, 1)]
        if candidates:
            # Prefer the level that matches the Shift state: no fix-up needed then.
            candidates.sort(key=lambda ci: (ci[1] != (1 if shifted else 0), ci[1], ci[0]))
            return candidates[0]
        code = self._bound.get(keysym)
        if code is not None:
            self._bound.move_to_end(keysym)
            return code, 0
        if self._spare:
            code = self._spare.pop()
        else:
            victim = next((s for s, c in self._bound.items() if c not in held), None)
            if victim is None:
                return None
            code = self._bound.pop(victim)
        self._d.change_keyboard_mapping(code, [(keysym, keysym)])
        self._d.sync()
        self._bound[keysym] = code
        logger.debug("= keysym %#x bound to spare keycode %d", keysym, code)
        return code, 0

    def _refresh_mapping(self) -> None:
        """Follow keymap changes (ours and the device's) before looking anything up."""
        while self._d.pending_events():
            event: Any = self._d.next_event()
            if event.type == X.MappingNotify and event.request == X.MappingKeyboard:
                self._d.refresh_keyboard_mapping(event)

    # -- lifecycle -------------------------------------------------------------------

    def release_all(self) -> None:
        for keycode in self._held.values():
            xtest.fake_input(self._d, X.KeyRelease, keycode)
        self._held.clear()
        self._release_buttons()
        for code in self._bound.values():
            self._d.change_keyboard_mapping(code, [(X.NoSymbol, X.NoSymbol)])
            self._spare.append(code)
        self._bound.clear()
        self._d.sync()

    def _release_buttons(self) -> None:
        for bit, button in ((1, 1), (2, 2), (4, 3)):
            if self._buttons & bit:
                xtest.fake_input(self._d, X.ButtonRelease, button)
        self._buttons = 0
        self._d.sync()

    def close(self) -> None:
        try:
            self.release_all()
            if self._autorepeat is not None:
                self._d.change_keyboard_control(auto_repeat_mode=self._autorepeat)
                self._d.sync()
        finally:
            self._d.close()


def inject(event: PointerEvent | WheelEvent | KeyEvent, sink: InputSink, monitor: Monitor) -> None:
    """Replay one viewer event on ``sink``. Pointer coordinates are relative to the
    watched ``monitor`` and clamped to it, so a viewer cannot point outside it."""
    if isinstance(event, PointerEvent):
        x = monitor.left + min(event.x, monitor.width - 1)
        y = monitor.top + min(event.y, monitor.height - 1)
        sink.pointer(x, y, event.buttons)
    elif isinstance(event, WheelEvent):
        sink.wheel(event.dx, event.dy)
    else:
        sink.key(event.keysym, event.down)


class InputPump:
    """Feeds viewer events to a sink on one worker thread, in arrival order, so a
    blocking X call never stalls the agent's event loop."""

    def __init__(self, sink: InputSink) -> None:
        self.sink = sink
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="desktop-input")

    async def handle(self, event: PointerEvent | WheelEvent | KeyEvent, monitor: Monitor) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self._pool, inject, event, self.sink, monitor
        )

    async def aclose(self) -> None:
        """Release everything held, close the sink, stop the thread."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self.sink.close)
        finally:
            self._pool.shutdown(wait=False)
