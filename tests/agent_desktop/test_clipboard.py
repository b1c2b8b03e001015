"""The clipboard in a session, enforced by the agent: the real agent on the real X
server, real X programs on the other side of the clipboard (a Tk program copying and
pasting, ``xclip``), the relay's part played by the stub (channel meta, `wire.Rights`).

Each test of a refusal fails if the agent's enforcement broke, whatever the relay does:
the stub relay passes everything."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.desktop.clipboard import MIN_INTERVAL, TO_DEVICE_BURST, TO_DEVICE_RATE
from desktop import wire
from desktop.clipboard import OnCopy, X11Clipboard
from tests.desktop.test_clipboard import TkClipboard, xclip_out
from tunnel.aio import Channel

from .conftest import Device, StartDevice, T

pytestmark = pytest.mark.skipif(
    shutil.which("xclip") is None, reason="xclip is not installed (Debian package xclip)"
)

CONTROL_L = 0xFFE3

QUIET = 8 * MIN_INTERVAL
"""How long a viewer listens to conclude that no clipboard text is coming: a copy the
agent forwards arrives within one MIN_INTERVAL."""


@pytest.fixture
def tk_clipboard(xdisplay: str) -> Iterator[TkClipboard]:
    program = TkClipboard(xdisplay)
    try:
        yield program
    finally:
        program.close()


async def joined(device: Device, mode: str, clipboard: bool) -> tuple[str, Channel]:
    session_id, reply = await device.request(mode=mode)
    assert reply.ok and reply.body["result"]["state"] == "accepted", reply.body
    await device.event(session_id, "accepted")
    channel = await device.open_desktop(session_id, mode, clipboard=clipboard)
    await device.event(session_id, "started")
    if clipboard:
        await audit(device, "clipboard-on")  # watching the device's clipboard from now on
    return session_id, channel


async def next_clipboard(channel: Channel, timeout: float = T) -> str | None:
    """The next clipboard text the viewer gets (screen updates skipped); None if none
    comes within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = wire.decode_device_message(await channel.recv())
                if isinstance(message, wire.Clipboard):
                    return message.text
    except TimeoutError:
        return None


async def pasted(display: str, expected: bytes) -> bool:
    """Whether a paste on the device gives ``expected`` within T (``xclip`` is another
    program: asking it is the only way to observe)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + T
    while loop.time() < deadline:
        if await asyncio.to_thread(_paste, display) == expected:
            return True
        await asyncio.sleep(0.05)
    return False


def _paste(display: str) -> bytes:
    try:
        return xclip_out(display)
    except subprocess.CalledProcessError:  # nobody owns the clipboard
        return b""


async def handled(channel: Channel) -> None:
    """Every message the viewer sent so far was handled: a refresh is answered in order."""
    await channel.send(wire.RefreshRequest().encode())
    async with asyncio.timeout(T):
        while True:
            message = wire.decode_device_message(await channel.recv())
            if isinstance(message, wire.FrameUpdate) and message.full and message.final:
                return


async def audit(device: Device, outcome: str, count: int = 1) -> list[dict[str, Any]]:
    """The agent's local audit lines with ``outcome`` once there are ``count`` of them."""
    path: Path = device.config_file.parent / "data" / "audit.log"
    async with asyncio.timeout(T):
        while True:
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            found = [e for e in lines if e["kind"] == "desktop" and e["outcome"] == outcome]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)


async def test_text_crosses_both_ways_with_the_right(
    start_device: StartDevice, tk_clipboard: TkClipboard
) -> None:
    device = await start_device(consent_required=False)
    session_id, channel = await joined(device, "control", clipboard=True)
    text = "Seriennummer: 4711-Ä ✓"
    await channel.send(wire.Clipboard(text).encode())
    assert await pasted(device.display, text.encode())
    assert await asyncio.to_thread(tk_clipboard.paste) == text  # a Tk program pastes it

    await asyncio.to_thread(tk_clipboard.copy, "error 42: disk full")  # Ctrl+C on the device
    assert await next_clipboard(channel) == "error 42: disk full"

    lines = await audit(device, "clipboard", 2)
    assert [(e["detail"]["direction"], e["detail"]["bytes"]) for e in lines] == [
        ("to-device", len(text.encode())),
        ("to-viewer", len(b"error 42: disk full")),
    ]
    assert all(e["detail"]["session_id"] == session_id for e in lines)
    log = (device.config_file.parent / "data" / "audit.log").read_text()
    assert "4711" not in log and "disk full" not in log  # sizes, never the text


async def test_without_the_right_nothing_crosses(
    start_device: StartDevice, tk_clipboard: TkClipboard
) -> None:
    device = await start_device(consent_required=False)
    await asyncio.to_thread(tk_clipboard.copy, "before the session")
    _, channel = await joined(device, "control", clipboard=False)
    await channel.send(wire.Clipboard("pasted without the right").encode())
    await handled(channel)
    assert await asyncio.to_thread(_paste, device.display) == b"before the session"
    refused = await audit(device, "clipboard-refused")
    assert refused[0]["detail"]["error"] == "no-right"

    await asyncio.to_thread(tk_clipboard.copy, "private to the device")
    assert await next_clipboard(channel, QUIET) is None


async def test_view_only_reads_the_device_but_writes_nothing(
    start_device: StartDevice, tk_clipboard: TkClipboard
) -> None:
    device = await start_device(consent_required=False)
    await asyncio.to_thread(tk_clipboard.copy, "before the session")
    _, channel = await joined(device, "view", clipboard=True)
    await channel.send(wire.Clipboard("not in a view-only session").encode())
    await handled(channel)
    assert await asyncio.to_thread(_paste, device.display) == b"before the session"
    assert (await audit(device, "clipboard-refused"))[0]["detail"]["error"] == "view-only"

    await asyncio.to_thread(tk_clipboard.copy, "log excerpt")
    assert await next_clipboard(channel) == "log excerpt"


async def test_a_withdrawn_right_stops_the_clipboard_at_once(
    start_device: StartDevice, tk_clipboard: TkClipboard
) -> None:
    device = await start_device(consent_required=False)
    _, channel = await joined(device, "control", clipboard=True)
    await channel.send(wire.Clipboard("from the viewer").encode())
    assert await pasted(device.display, b"from the viewer")

    await channel.send(wire.Rights(clipboard=False).encode())  # the relay: right removed
    await audit(device, "clipboard-off")
    # The agent gave the clipboard up: the text it held is no longer pasteable...
    assert await pasted(device.display, b"")
    # ... nothing copied on the device goes out, nothing from the viewer comes in.
    await asyncio.to_thread(tk_clipboard.copy, "copied after the withdrawal")
    await channel.send(wire.Clipboard("sent after the withdrawal").encode())
    assert await next_clipboard(channel, QUIET) is None
    assert await asyncio.to_thread(tk_clipboard.paste) == "copied after the withdrawal"

    await channel.send(wire.Rights(clipboard=True).encode())  # granted again
    await audit(device, "clipboard-on", 2)
    await asyncio.to_thread(tk_clipboard.copy, "copied once granted again")
    assert await next_clipboard(channel) == "copied once granted again"


async def test_a_flood_of_texts_from_the_viewer_is_slowed_not_queued(
    start_device: StartDevice,
) -> None:
    device = await start_device(consent_required=False)
    _, channel = await joined(device, "control", clipboard=True)
    count = TO_DEVICE_BURST + 4
    for n in range(count):
        await channel.send(wire.Clipboard(f"paste {n}").encode())
    assert await pasted(device.display, f"paste {count - 1}".encode())
    lines = await audit(device, "clipboard", count)
    assert [e["detail"]["bytes"] for e in lines] == [len(f"paste {n}") for n in range(count)]
    first, last = (datetime.fromisoformat(lines[i]["ts"]) for i in (0, -1))
    # The burst goes at once; the rest at TO_DEVICE_RATE a second.
    assert (last - first).total_seconds() >= 0.9 * (count - TO_DEVICE_BURST) / TO_DEVICE_RATE


PASTER = r"""
import json, sys, tkinter as tk
root = tk.Tk()
root.geometry("200x100+1000+600")
def paste(_event):
    try:
        text = root.clipboard_get()
    except tk.TclError:
        text = None
    print(json.dumps({"pasted": text}), flush=True)
root.bind("<Control-v>", paste)
def ready():
    root.focus_force()
    root.update_idletasks()
    root.winfo_pointerxy()
    print(json.dumps({"ready": True}), flush=True)
root.wait_visibility(root)  # focus goes only to a mapped window
root.after_idle(ready)
root.mainloop()
"""


class SlowClipboard:
    """The X11 clipboard taking its time to set the text (a busy X server): a paste
    that does not wait for it finds the old text."""

    def __init__(self, display: str, on_copy: OnCopy | None) -> None:
        self._real = X11Clipboard(display, on_copy)
        self.max_bytes = self._real.max_bytes

    def put(self, text: str) -> bool:
        time.sleep(0.3)  # the worker thread of the agent's event loop: a slow X round trip
        return self._real.put(text)

    def close(self) -> None:
        self._real.close()


async def test_a_paste_after_the_text_pastes_that_text(
    start_device: StartDevice, xdisplay: str
) -> None:
    """The viewer sends the text, then Ctrl+V: the program on the device pastes it."""
    device = await start_device(SlowClipboard, consent_required=False)
    _, channel = await joined(device, "control", clipboard=True)
    paster = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PASTER,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "DISPLAY": xdisplay},
    )
    assert paster.stdout is not None
    try:
        async with asyncio.timeout(T):
            assert json.loads(await paster.stdout.readline()) == {"ready": True}
        for n in range(3):
            text = f"paste number {n}: Ä✓"
            await channel.send(wire.Clipboard(text).encode())
            for message in (
                wire.KeyEvent(CONTROL_L, True),
                wire.KeyEvent(ord("v"), True),
                wire.KeyEvent(ord("v"), False),
                wire.KeyEvent(CONTROL_L, False),
            ):
                await channel.send(message.encode())
            async with asyncio.timeout(T):
                assert json.loads(await paster.stdout.readline()) == {"pasted": text}
    finally:
        paster.terminate()
        await paster.wait()
