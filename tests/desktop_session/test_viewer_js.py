"""The browser viewer's modules under Node: it speaks desktop/wire.py (both directions,
checked against the Python codec) and maps keys to the keysyms the device expects."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from desktop import wire
from desktop.geometry import Rect
from tests.conftest import UNIT

NODE = shutil.which("node")
if NODE is None:
    pytest.skip("node is not installed", allow_module_level=True)

STATIC = Path(__file__).resolve().parents[2] / "web" / "static" / "viewer"

DRIVER = """
import {parse, encode, WireError} from "%(static)s/wire.js";
import {keysymFor, KeyTracker} from "%(static)s/keys.js";
const input = JSON.parse(process.argv[2]);
const hex = (buf) => Buffer.from(buf).toString("hex");
const bytes = (h) => new Uint8Array(Buffer.from(h, "hex")).buffer;
const out = {parsed: [], malformed: [], encoded: {}, keys: [], tracker: []};
for (const h of input.device) {
  const m = parse(bytes(h));
  if (m.rects) m.rects = m.rects.map((r) => ({...r, data: hex(r.data)}));
  if (m.rgba) m.rgba = hex(m.rgba);
  out.parsed.push(m);
}
for (const h of input.malformed) {
  try { parse(bytes(h)); out.malformed.push("parsed"); }
  catch (e) { out.malformed.push(e instanceof WireError ? "WireError" : String(e)); }
}
out.encoded = {
  pointer: hex(encode.pointer(1279, 799, 5)), wheel: hex(encode.wheel(-2, 40)),
  key: hex(encode.key(true, 0x1000e9)), refresh: hex(encode.refresh()),
  select: hex(encode.selectMonitor(2)), settings: hex(encode.settings(0, 70)),
  clipboard: hex(encode.clipboard("Grüße ✓")),
};
for (const e of input.keys) out.keys.push(keysymFor(e));
const sent = [];
const t = new KeyTracker((down, keysym) => sent.push([down, keysym]));
t.down({key: "Shift", code: "ShiftLeft"});
t.down({key: "a", code: "KeyA"});
t.down({key: "a", code: "KeyA", repeat: true});
t.up({key: "Shift", code: "ShiftLeft"});
t.up({key: "A", code: "KeyA"});
t.down({key: "Control", code: "ControlLeft"});
t.releaseAll();
out.tracker = sent;
console.log(JSON.stringify(out));
"""


def run_node(tmp_path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    assert NODE is not None
    driver = tmp_path / "driver.mjs"
    driver.write_text(DRIVER % {"static": STATIC})
    done = subprocess.run(
        [NODE, str(driver), json.dumps(payload)],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_viewer_speaks_the_wire_format_and_maps_keys(tmp_path: Path) -> None:
    jpeg = b"\xff\xd8\xff" + b"\x00" * 20
    webp = b"RIFF\x00\x00\x00\x00WEBPVP8L" + b"\x01" * 8
    frame = wire.FrameUpdate(
        7,
        1,
        640,
        480,
        (
            wire.EncodedRect(Rect(0, 0, 640, 480), wire.Codec.FILL, b"\x10\x20\x30"),
            wire.EncodedRect(Rect(10, 20, 30, 40), wire.Codec.JPEG, jpeg),
            wire.EncodedRect(Rect(0, 100, 640, 50), wire.Codec.COPY, wire.copy_payload(0, 120)),
            wire.EncodedRect(Rect(600, 400, 40, 80), wire.Codec.WEBP_LOSSLESS, webp),
        ),
        final=True,
        full=True,
    )
    device = [
        frame.encode(),
        wire.CursorPosition(-5, 300, visible=True).encode(),
        wire.CursorShape(9, 1, 2, 2, 3, bytes(range(24))).encode(),
        wire.MonitorList(
            (
                wire.MonitorEntry(0, 0, 3840, 1080),
                wire.MonitorEntry(-1920, 0, 1920, 1080, primary=True),
            ),
            1,
        ).encode(),
        wire.Clipboard("naïve ✓").encode(),
    ]
    good = frame.encode()
    malformed = [
        b"",
        b"\x01" + good[1:-1],
        good + b"\x00",
        b"\x10\x00\x00\x00\x00\x00",
        b"\x05\xff\xfe",
        b"\x02\x00",
    ]
    keys = [
        {"key": "a", "code": "KeyA"},
        {"key": "A", "code": "KeyA"},
        {"key": "é", "code": "Digit2"},
        {"key": "€", "code": "KeyE"},
        {"key": "Enter", "code": "Enter"},
        {"key": "F12", "code": "F12"},
        {"key": "Shift", "code": "ShiftRight"},
        {"key": "Control", "code": "ControlLeft"},
        {"key": "AltGraph", "code": "AltRight"},
        {"key": "5", "code": "Numpad5"},
        {"key": "End", "code": "Numpad1"},
        {"key": "Dead", "code": "BracketLeft"},
        {"key": " ", "code": "Space"},
        {"key": "😀", "code": ""},
    ]
    out = run_node(
        tmp_path,
        {
            "device": [m.hex() for m in device],
            "malformed": [m.hex() for m in malformed],
            "keys": keys,
        },
    )

    parsed = out["parsed"]
    assert parsed[0]["seq"] == 7 and parsed[0]["final"] and parsed[0]["full"]
    assert [
        (r["x"], r["y"], r["w"], r["h"], r["codec"], bytes.fromhex(r["data"]))
        for r in parsed[0]["rects"]
    ] == [(r.rect.x, r.rect.y, r.rect.w, r.rect.h, int(r.codec), r.data) for r in frame.rects]
    assert (parsed[1]["x"], parsed[1]["y"], parsed[1]["visible"]) == (-5, 300, True)
    assert (parsed[2]["hotX"], parsed[2]["hotY"], parsed[2]["w"], parsed[2]["h"]) == (1, 2, 2, 3)
    assert bytes.fromhex(parsed[2]["rgba"]) == bytes(range(24))
    assert parsed[3]["current"] == 1
    assert parsed[3]["monitors"][1] == {
        "left": -1920,
        "top": 0,
        "width": 1920,
        "height": 1080,
        "primary": True,
    }
    assert parsed[4]["text"] == "naïve ✓"
    assert out["malformed"] == ["WireError"] * len(malformed)

    enc = {k: wire.decode_viewer_message(bytes.fromhex(v)) for k, v in out["encoded"].items()}
    assert enc == {
        "pointer": wire.PointerEvent(1279, 799, 5),
        "wheel": wire.WheelEvent(-2, 32),
        "key": wire.KeyEvent(0x1000E9, True),
        "refresh": wire.RefreshRequest(),
        "select": wire.SelectMonitor(2),
        "settings": wire.StreamSettings(0, 70),
        "clipboard": wire.Clipboard("Grüße ✓"),
    }
    assert out["keys"] == [
        0x61,
        0x41,
        0xE9,
        0x010020AC,
        0xFF0D,
        0xFFC9,
        0xFFE2,
        0xFFE3,
        0xFE03,
        0xFFB5,
        0xFF57,
        None,
        0x20,
        0x0101F600,
    ]
    # Repeat presses again; the release names what was pressed (not the shifted "A");
    # releaseAll lets go of what is still held.
    assert out["tracker"] == [
        [True, 0xFFE1],
        [True, 0x61],
        [True, 0x61],
        [False, 0xFFE1],
        [False, 0x61],
        [True, 0xFFE3],
        [False, 0xFFE3],
    ]
