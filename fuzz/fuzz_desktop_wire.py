"""Fuzz the desktop wire decoders (``desktop.wire``): device and viewer messages.

Each input is decoded as a device message and as a viewer message; the only error
allowed is :class:`~desktop.wire.WireError`, and a decoded message re-encodes to a
message that decodes to itself. Run: ``python fuzz/fuzz_desktop_wire.py -max_total_time=5``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris
from harness import run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from desktop.wire import WireError, decode_device_message, decode_viewer_message


def test_one_input(data: bytes) -> None:
    for decode in (decode_device_message, decode_viewer_message):
        try:
            message = decode(data)
        except WireError:
            continue
        assert decode(message.encode()) == message, message


if __name__ == "__main__":
    run(test_one_input)
