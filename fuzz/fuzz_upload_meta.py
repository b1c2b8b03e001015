"""Fuzz the log-upload metadata parser (``relay_server.telemetry.uploads``).

An agent opening an upload channel sends JSON metadata (upload id, source, size,
hash, format, reason); ``parse_upload_meta`` may raise only
:class:`~relay_server.telemetry.uploads.UploadMetaError`, and what it accepts
parses again to itself. Run: ``python fuzz/fuzz_upload_meta.py -max_total_time=5``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris
from harness import json_object, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from relay_server.telemetry.uploads import UploadMetaError, parse_upload_meta

KEYS = ("upload", "source", "size", "sha256", "format", "reason")
VALUES = ["00000000-0000-4000-8000-000000000000", "app", "tar.gz", "rule", "a" * 64, 10]
MAX_BYTES = 1 << 20


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    meta = json_object(fdp, KEYS)
    for key in KEYS:
        if fdp.ConsumeIntInRange(0, 2) == 0:
            meta[key] = fdp.PickValueInList(VALUES)
    try:
        parsed = parse_upload_meta(meta, MAX_BYTES)
    except UploadMetaError:
        return
    assert parse_upload_meta(parsed | {"format": "tar.gz"}, MAX_BYTES) == parsed


if __name__ == "__main__":
    run(test_one_input)
