"""Fuzz the rule language parser (``telemetry.rules.validate_rule``).

Rules are typed by people, but a rule names device data (codes, metrics, messages)
and its regexes run on device text, so the parser must hold against any input: the
only error allowed is :class:`~telemetry.rules.RuleSyntaxError`, and a rule that
parses can be evaluated against a record. Inputs are raw text or sentences made of
the language's own words with fuzzed holes, so deep branches are reached.
Run: ``python fuzz/fuzz_rules.py -max_total_time=5``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris
from harness import EDGE_TEXT, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from telemetry.records import Event, Metrics, Severity
    from telemetry.rules import DeviceInfo, RuleEngine, RuleSyntaxError, validate_rule

WORDS = [
    *("when", "on", "then", "code", "severity", "message", "metric", "offline", "rate", "for"),
    *("in", "all", "device", "site", "customer", "model", "alarm", "email", "webhook"),
    *("fetch", "logs", "priority", "urgent", "warning", "routine", ">", ">=", "<", "<=", "=="),
    *("!=", "~", ",", "/", "E9*", "cpu.percent", "disk.percent:/", "temp.c:gpu", "90", "-1"),
    *("1e999", "5m", "30d", "31d", "0s", "9" * 40, "\u00b9\u00b2m", '"(a+)+$"', '"["', '"'),
    *("acme/radiology", "00000000-0000-4000-8000-000000000000", "a@b.example", "ops", "app"),
]


DEVICE = "00000000-0000-4000-8000-000000000000"


def text_of(fdp: atheris.FuzzedDataProvider) -> str:
    if fdp.ConsumeBool():
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 300))
    parts = []
    for _ in range(fdp.ConsumeIntInRange(1, 24)):
        choice = fdp.ConsumeIntInRange(0, 9)
        if choice == 0:
            parts.append(fdp.PickValueInList(list(EDGE_TEXT)))
        elif choice == 1:
            parts.append(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 12)))
        else:
            parts.append(fdp.PickValueInList(WORDS))
    return " ".join(parts)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    text = text_of(fdp)
    try:
        rule = validate_rule(text, webhooks=["ops"])
    except RuleSyntaxError:
        return
    engine = RuleEngine()
    engine.load({1: rule})
    device = DeviceInfo(DEVICE, "acme", "radiology", "CT 9000")
    ts = 1_700_000_000.0
    message = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 200))
    engine.on_record(device, Event(1, ts, "E9001", Severity.URGENT, "app", message))
    value = fdp.ConsumeRegularFloat()
    engine.on_record(device, Metrics(2, ts + 1, {"cpu.percent": value, "disk.percent:/": value}))


if __name__ == "__main__":
    run(test_one_input)
