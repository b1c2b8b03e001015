"""Input injection on the real X server, observed by the program that receives it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from Xlib import X
from Xlib import display as xdisplay_mod

from desktop.capture import Monitor
from desktop.inject import InputPump, ViewOnly, XTestSink, inject
from desktop.wire import KeyEvent, PointerEvent, WheelEvent
from desktop.x11 import X11Error

from .conftest import App, Event

F12 = 0xFFC9  # the sentinel key: "everything sent before it has arrived"
SHIFT_L = 0xFFE1
CONTROL_L = 0xFFE3
SCREEN = Monitor(1, 0, 0, 1280, 800)


def keysym_of(char: str) -> int:
    """The keysym a viewer sends for a character: Latin-1 as is, else Unicode."""
    cp = ord(char)
    return cp if 0x20 <= cp <= 0x7E or 0xA0 <= cp <= 0xFF else 0x0100_0000 + cp


@pytest.fixture
def sink(xdisplay: str, app: App) -> Iterator[XTestSink]:
    s = XTestSink(xdisplay)
    app.drain()
    try:
        yield s
    finally:
        s.close()


def tap(sink: XTestSink, keysym: int) -> None:
    sink.key(keysym, True)
    sink.key(keysym, False)


def until_sentinel(app: App, sink: XTestSink) -> list[Event]:
    tap(sink, F12)
    events = app.expect(lambda e: e["event"] == "keyup" and e["keysym"] == "F12")
    return [e for e in events if e.get("keysym") != "F12"]


def typed(events: list[Event]) -> str:
    return "".join(e["char"] for e in events if e["event"] == "key")


def test_click_reaches_the_program_where_it_was_aimed(app: App, sink: XTestSink) -> None:
    sink.pointer(150, 150, 0)
    sink.pointer(150, 150, 0b001)
    sink.pointer(150, 150, 0)
    sink.pointer(640, 400, 0b100)  # right button, pressed at another place
    sink.pointer(640, 400, 0)
    sink.pointer(641, 401, 0b010)
    sink.pointer(641, 401, 0)
    buttons = [e for e in until_sentinel(app, sink) if e["event"] in ("button", "release")]
    assert [(e["event"], e["num"], e["x"], e["y"]) for e in buttons] == [
        ("button", 1, 150, 150),
        ("release", 1, 150, 150),
        ("button", 3, 640, 400),
        ("release", 3, 640, 400),
        ("button", 2, 641, 401),
        ("release", 2, 641, 401),
    ]


def test_wheel_is_buttons_4_and_5(app: App, sink: XTestSink) -> None:
    sink.pointer(300, 300, 0)
    sink.wheel(0, 2)
    sink.wheel(0, -1)
    presses = [e["num"] for e in until_sentinel(app, sink) if e["event"] == "button"]
    assert presses == [5, 5, 4]


@pytest.mark.parametrize(
    "text",
    [
        "Hello, World!",
        "digits 0123456789 and UPPER lower",
        "punctuation ~`!@#$%^&*()_+-=[]{}\\|;:'\",.<>/?",
        "non-US: é à ü ß € — ☃",
    ],
)
def test_typed_text_arrives_as_typed(app: App, sink: XTestSink, text: str) -> None:
    for char in text:
        tap(sink, keysym_of(char))
    assert typed(until_sentinel(app, sink)) == text


def test_viewer_shift_state_is_respected(app: App, sink: XTestSink) -> None:
    # With Shift held on the viewer, its layout may still produce unshifted symbols
    # (a French "1" is Shift+&): "1" must type "1", and "A" needs no extra Shift.
    sink.key(SHIFT_L, True)
    for char in "1A;":
        tap(sink, keysym_of(char))
    sink.key(SHIFT_L, False)
    assert typed(until_sentinel(app, sink)) == "1A;"


def test_modifiers_and_function_keys(app: App, sink: XTestSink) -> None:
    sink.key(CONTROL_L, True)
    tap(sink, keysym_of("a"))
    sink.key(CONTROL_L, False)
    tap(sink, 0xFFC2)  # F5
    tap(sink, 0xFF0D)  # Return
    keys = [e for e in until_sentinel(app, sink) if e["event"] == "key"]
    ctrl_a = next(e for e in keys if e["keysym"] == "a")
    assert ctrl_a["state"] & 0x4 and ctrl_a["char"] == "\x01"
    assert [e["keysym"] for e in keys if e["keysym"] in ("F5", "Return")] == ["F5", "Return"]


def test_spare_keycodes_are_restored(xdisplay: str, app: App) -> None:
    probe = xdisplay_mod.Display(xdisplay)
    try:
        eacute = keysym_of("é")
        assert list(probe.keysym_to_keycodes(eacute)) == []  # not on the US map
        sink = XTestSink(xdisplay)
        tap(sink, eacute)
        sink.close()
        info = probe.display.info
        mapping = probe.get_keyboard_mapping(
            info.min_keycode, info.max_keycode - info.min_keycode + 1
        )
        assert not any(eacute in syms for syms in mapping)
    finally:
        probe.close()
    app.drain()


def test_release_all_lets_go_of_held_keys_and_buttons(app: App, sink: XTestSink) -> None:
    sink.pointer(200, 200, 0b001)
    sink.key(keysym_of("q"), True)
    sink.release_all()
    events = until_sentinel(app, sink)
    assert [e["event"] for e in events if e["event"] in ("button", "release")] == [
        "button",
        "release",
    ]
    assert [e["event"] for e in events if e.get("keysym") == "q"] == ["key", "keyup"]


def test_view_only_injects_nothing(app: App, sink: XTestSink) -> None:
    view_only = ViewOnly()
    for event in (
        PointerEvent(150, 150, 1),
        PointerEvent(150, 150, 0),
        WheelEvent(0, 3),
        KeyEvent(keysym_of("x"), True),
        KeyEvent(keysym_of("x"), False),
    ):
        inject(event, view_only, SCREEN)
    assert view_only.dropped == 5
    # The sentinel goes through the real sink; nothing may have arrived before it.
    assert until_sentinel(app, sink) == []


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def pointer(self, x: int, y: int, buttons: int) -> None:
        self.calls.append(("pointer", x, y, buttons))

    def wheel(self, dx: int, dy: int) -> None:
        self.calls.append(("wheel", dx, dy))

    def key(self, keysym: int, down: bool) -> None:
        self.calls.append(("key", keysym, down))

    def release_all(self) -> None:
        self.calls.append(("release_all",))

    def close(self) -> None:
        self.calls.append(("close",))


def test_inject_translates_and_clamps_to_the_watched_monitor() -> None:
    right = Monitor(2, 1920, 0, 1280, 1024)
    rec = Recorder()
    inject(PointerEvent(10, 20, 1), rec, right)
    inject(PointerEvent(60000, 60000, 0), rec, right)  # cannot point outside the monitor
    inject(WheelEvent(1, -2), rec, right)
    inject(KeyEvent(0x61, True), rec, right)
    assert rec.calls == [
        ("pointer", 1930, 20, 1),
        ("pointer", 1920 + 1279, 1023, 0),
        ("wheel", 1, -2),
        ("key", 0x61, True),
    ]


async def test_pump_keeps_order_off_the_event_loop() -> None:
    rec = Recorder()
    pump = InputPump(rec)
    loop_thread = asyncio.get_running_loop()
    await asyncio.gather(*(pump.handle(KeyEvent(0x61 + i, True), SCREEN) for i in range(20)))
    await pump.aclose()
    assert [c[1] for c in rec.calls[:-1]] == [0x61 + i for i in range(20)]
    assert rec.calls[-1] == ("close",)
    assert loop_thread.is_running()


# python-xlib leaves the sockets of a failed connection attempt for the collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_xtest_sink_needs_a_display() -> None:
    with pytest.raises(X11Error, match="display"), contextlib.closing(XTestSink(":4999")):
        pass


def test_autorepeat_is_off_during_the_session_and_restored(xdisplay: str, app: App) -> None:
    probe = xdisplay_mod.Display(xdisplay)
    try:
        before = probe.get_keyboard_control().global_auto_repeat
        sink = XTestSink(xdisplay, disable_autorepeat=True)
        assert probe.get_keyboard_control().global_auto_repeat == X.AutoRepeatModeOff
        sink.close()
        assert probe.get_keyboard_control().global_auto_repeat == before
    finally:
        probe.close()
