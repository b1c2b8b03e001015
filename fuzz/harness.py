"""What every atheris target here shares: the run loop and JSON built from fuzz bytes.

Each ``fuzz_*.py`` is one target for one parser that reads device (or peer) data,
run from the repository root with any libFuzzer flag::

    python fuzz/fuzz_control.py -max_total_time=5

``./outlink test`` runs every target in turn, splitting ``OUTLINK_FUZZ_SECONDS``
between them. A parser may raise only its documented error; anything else is a
crash, saved to ``crash-<sha1>`` (replay: ``python fuzz/<target>.py crash-...``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import atheris

#: Values that broke parsers elsewhere: past 2**63, not finite, not JSON-exact, odd text.
EDGE_NUMBERS: tuple[Any, ...] = (0, -1, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 1e308, -0.0)
EDGE_TEXT = ("", "\x00", "\u00b2", "\ud800", "\u202e", "a" * 5000, "../", "\r\n")


def json_value(fdp: atheris.FuzzedDataProvider, keys: Sequence[str], depth: int = 3) -> Any:
    """A JSON-able value whose objects use ``keys`` (the parser's field names) mostly."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth > 0 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.PickValueInList(list(EDGE_NUMBERS))
    if kind == 3:
        return fdp.ConsumeIntInRange(-(2**70), 2**70)
    if kind == 4:
        return fdp.ConsumeRegularFloat()
    if kind == 5:
        return fdp.PickValueInList(list(EDGE_TEXT))
    if kind == 6:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 40))
    if kind == 7:
        return [json_value(fdp, keys, depth - 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    obj: dict[str, Any] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        key = fdp.PickValueInList(list(keys)) if fdp.ConsumeBool() else fdp.ConsumeUnicode(4)
        obj[key] = json_value(fdp, keys, depth - 1)
    return obj


def json_object(fdp: atheris.FuzzedDataProvider, keys: Sequence[str]) -> dict[str, Any]:
    """An object whose fields are the parser's (``keys``) with fuzzed values, plus noise."""
    obj = {key: json_value(fdp, keys) for key in keys if fdp.ConsumeBool()}
    if fdp.ConsumeBool():
        obj[fdp.ConsumeUnicode(6)] = json_value(fdp, keys)
    return obj


def dumps(value: Any) -> bytes:
    """JSON bytes, lone surrogates and all (``surrogatepass``: a hostile peer sends them)."""
    return json.dumps(value).encode("utf-8", "surrogatepass")


def run(test_one_input: Callable[[bytes], None]) -> None:
    # Refusing garbage is the expected outcome; logging each refusal floods CI output.
    logging.disable(logging.WARNING)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
