"""Fuzz the control-channel parser (``protocol.control.parse``) and its envelope.

Every message an agent sends on its control channel (hello, renew, events,
replies to instructions) goes through ``parse``; it may raise only
:class:`~protocol.envelope.MessageError`. Inputs are raw bytes or messages with the
envelope's and the ops' field names and fuzzed values.
Run: ``python fuzz/fuzz_control.py -max_total_time=5``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris
from harness import dumps, json_object, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from protocol.control import Event, Instruct, parse
    from protocol.envelope import MessageError

KEYS = ("id", "op", "ok", "version", "capabilities", "csr", "name", "instruction", "action")
OPS = ("hello", "renew", "event", "instruct", "nope")


def message(fdp: atheris.FuzzedDataProvider) -> bytes:
    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    obj = json_object(fdp, KEYS)
    if fdp.ConsumeBool():
        obj["op"] = fdp.PickValueInList(list(OPS))
    if fdp.ConsumeBool():
        obj["id"] = fdp.ConsumeIntInRange(-2, 2**64)
    return dumps(obj)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    raw = message(fdp)
    try:
        parsed = parse(raw)
    except MessageError:
        return
    if isinstance(parsed, Event):
        assert isinstance(parsed.name, str) and isinstance(parsed.fields, dict)
    elif isinstance(parsed, Instruct):
        assert isinstance(parsed.instruction.get("action"), str)


if __name__ == "__main__":
    run(test_one_input)
