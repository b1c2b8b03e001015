"""Fuzz the desktop session contract (``protocol.desktop``): every message's ``parse``.

The agent's state and policy reports, its replies, and the portal's requests all
arrive as decoded JSON; each ``parse`` may raise only
:class:`~protocol.envelope.MessageError`, and ``parse(m.to_json()) == m`` for every
message it accepts. Inputs are raw JSON, or objects with the contract's field names.
Run: ``python fuzz/fuzz_desktop_protocol.py -max_total_time=5``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris
from harness import json_object, json_value, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from protocol import desktop
    from protocol.envelope import MessageError

MESSAGES = [
    desktop.Requester,
    desktop.SessionRequest,
    desktop.RequestReply,
    desktop.ConsentAnswer,
    desktop.EndRequest,
    desktop.StateReply,
    desktop.JoinMeta,
    desktop.StateReport,
    desktop.PolicyReport,
]
KEYS = (
    *("action", "session_id", "mode", "requester", "user", "name", "organisation", "reason"),
    *("state", "decision", "by", "viewer", "duration_s", "end_reason", "timeout_s", "consent"),
    *("bytes_out", "inputs", "clipboard", "prompt"),
)
VALUES = [
    "00000000-0000-4000-8000-000000000000",
    *[
        str(v)
        for e in (desktop.Mode, desktop.State, desktop.Decision, desktop.EndReason)
        for v in e
    ],
]


def value(fdp: atheris.FuzzedDataProvider) -> object:
    if fdp.ConsumeIntInRange(0, 3) == 0:
        try:
            return json.loads(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512)))
        except (ValueError, RecursionError):
            return None
    obj = json_object(fdp, KEYS)
    for key in KEYS:
        if fdp.ConsumeIntInRange(0, 3) == 0:
            obj[key] = fdp.PickValueInList(VALUES)
    if "requester" in obj and fdp.ConsumeBool():
        obj["requester"] = json_object(fdp, KEYS)
    return obj if fdp.ConsumeIntInRange(0, 7) else json_value(fdp, KEYS)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cls = fdp.PickValueInList(MESSAGES)
    obj = value(fdp)
    try:
        message = cls.parse(obj)
    except MessageError:
        return
    assert cls.parse(message.to_json()) == message, message


if __name__ == "__main__":
    run(test_one_input)
