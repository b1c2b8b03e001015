"""Fuzz the telemetry codec (``telemetry.codec``): batches from agents, replies to them.

``parse_batch`` reads what a device sends (JSON or a zlib stream of it) and
``parse_reply`` what the relay answers; both may raise only
:class:`~telemetry.codec.CodecError`, and a record that is accepted survives
re-encoding. Inputs are raw bytes, or batches with fuzzed records (optionally
compressed) so record validation is reached.
Run: ``python fuzz/fuzz_telemetry_codec.py -max_total_time=5``.
"""

from __future__ import annotations

import contextlib
import sys
import zlib
from pathlib import Path

import atheris
from harness import dumps, json_object, json_value, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from telemetry.codec import CodecError, parse_batch, parse_reply
    from telemetry.records import parse_record, to_wire

DEVICE = "00000000-0000-4000-8000-000000000000"
NOW = 1_700_000_000.0
BATCH_KEYS = ("type", "batch", "device", "records", "accepted", "duplicates", "rejected")
RECORD_KEYS = ("kind", "seq", "ts", "values", "code", "severity", "source", "message", "name")


def message(fdp: atheris.FuzzedDataProvider) -> bytes:
    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    batch = json_object(fdp, BATCH_KEYS)
    if fdp.ConsumeBool():
        batch.update(type="batch", batch=fdp.ConsumeIntInRange(0, 10))
        batch["records"] = [
            json_object(fdp, RECORD_KEYS) if fdp.ConsumeBool() else json_value(fdp, RECORD_KEYS)
            for _ in range(fdp.ConsumeIntInRange(0, 6))
        ]
    data = dumps(batch)
    return zlib.compress(data) if fdp.ConsumeBool() else data


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    raw = message(fdp)
    try:
        batch = parse_batch(raw, now=NOW, device_id=DEVICE)
    except CodecError:
        pass
    else:
        for record in batch.records:
            assert parse_record(to_wire(record), now=NOW, device_id=DEVICE) == record
    with contextlib.suppress(CodecError):
        parse_reply(raw)


if __name__ == "__main__":
    run(test_one_input)
