"""Records and the telemetry channel codec: allow-lists, limits, identity, round trips."""

from __future__ import annotations

import contextlib
import json
import math
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.codec import (
    ERR_MALFORMED,
    ERR_TOO_LARGE,
    ERR_TOO_MANY,
    MAX_BATCH_RECORDS,
    MAX_MESSAGE,
    Ack,
    CodecError,
    ErrorReply,
    encode_ack,
    encode_batch,
    encode_error,
    encode_record,
    parse_batch,
    parse_reply,
)
from telemetry.records import (
    ERR_BAD_RECORD,
    ERR_BAD_TS,
    ERR_NOT_ALLOWED,
    ERR_WRONG_DEVICE,
    MAX_METRICS,
    Event,
    Metrics,
    Properties,
    RecordError,
    Severity,
    metric_allowed,
    parse_record,
    to_wire,
)
from telemetry.records import ERR_TOO_LARGE as ERR_RECORD_TOO_LARGE
from telemetry.records import MAX_MESSAGE as MAX_EVENT_MESSAGE
from telemetry.severity import SeverityTable

NOW = 1_800_000_000.0
DEVICE = "6f1c2d3e-4a5b-4c6d-8e7f-901234567890"
OTHER = "0f1c2d3e-4a5b-4c6d-8e7f-901234567890"


def metrics(seq: int = 1, **values: float) -> dict[str, object]:
    return {"seq": seq, "ts": NOW, "kind": "metrics", "values": values or {"cpu.percent": 1.5}}


def event(seq: int = 2, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "seq": seq,
        "ts": NOW,
        "kind": "event",
        "code": "E9001",
        "severity": "urgent",
        "source": "app",
        "message": "Tube overtemperature",
    }
    return {**base, **fields}


def parse(obj: object) -> object:
    return parse_record(obj, now=NOW, device_id=DEVICE)


def refused(obj: object) -> str:
    with pytest.raises(RecordError) as info:
        parse(obj)
    return info.value.code


def test_each_kind_parses_and_round_trips() -> None:
    for obj, kind in (
        (metrics(**{"cpu.percent": 3.0, "disk.percent:/": 71.0}), Metrics),
        (event(), Event),
        ({"seq": 3, "ts": NOW, "kind": "props", "values": {"model": "CT-9000"}}, Properties),
    ):
        record = parse(obj)
        assert isinstance(record, kind)
        assert to_wire(record) == obj  # type: ignore[arg-type]
        assert json.loads(encode_record(record)) == obj  # type: ignore[arg-type]


def test_only_allow_listed_fields_and_names_pass() -> None:
    assert refused({**metrics(), "patient": "DOE^JOHN"}) == ERR_NOT_ALLOWED
    assert refused(metrics(**{"patient.name": 1.0})) == ERR_NOT_ALLOWED
    assert refused({"seq": 1, "ts": NOW, "kind": "props", "values": {"operator": "Jane"}}) == (
        ERR_NOT_ALLOWED
    )
    assert metric_allowed("device.tube_temp") and metric_allowed("temp.c:coretemp")
    assert not metric_allowed("temp.c:a b") and not metric_allowed("CPU")


def test_a_record_naming_another_device_is_refused() -> None:
    assert refused({**metrics(), "device": OTHER}) == ERR_WRONG_DEVICE
    assert isinstance(parse({**metrics(), "device": DEVICE}), Metrics)


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ([], ERR_BAD_RECORD),
        ({**metrics(), "seq": 0}, ERR_BAD_RECORD),
        ({**metrics(), "seq": True}, ERR_BAD_RECORD),
        ({**metrics(), "seq": 2**60}, ERR_BAD_RECORD),
        ({**metrics(), "ts": "yesterday"}, ERR_BAD_RECORD),
        ({**metrics(), "ts": math.inf}, ERR_BAD_RECORD),
        ({**metrics(), "ts": 100.0}, ERR_BAD_TS),
        ({**metrics(), "ts": NOW + 10 * 86_400}, ERR_BAD_TS),
        ({**metrics(), "kind": "shell"}, ERR_BAD_RECORD),
        (metrics(**{"cpu.percent": math.nan}), ERR_BAD_RECORD),
        (metrics(**{f"device.m{i}": 1.0 for i in range(MAX_METRICS + 1)}), ERR_RECORD_TOO_LARGE),
        (event(message="x" * (MAX_EVENT_MESSAGE + 1)), ERR_RECORD_TOO_LARGE),
        (event(code="E 1"), ERR_BAD_RECORD),
        (event(severity="panic"), ERR_BAD_RECORD),
        (event(source="../etc"), ERR_BAD_RECORD),
    ],
)
def test_malformed_records_are_refused_with_a_code(obj: object, code: str) -> None:
    assert refused(obj) == code


def test_a_batch_keeps_good_records_and_lists_refused_ones() -> None:
    data = encode_batch(
        4,
        [
            json.dumps(metrics(1)).encode(),
            json.dumps({**event(2), "patient": "x"}).encode(),
            b'"not a record"',
        ],
    )
    batch = parse_batch(data, now=NOW, device_id=DEVICE)
    assert batch.batch == 4
    assert [r.seq for r in batch.records] == [1]
    assert batch.rejected == [(2, ERR_NOT_ALLOWED), (0, ERR_BAD_RECORD)]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xfe", ERR_MALFORMED),
        (b"[1,2]", ERR_MALFORMED),
        (b'{"type":"batch","batch":-1,"records":[]}', ERR_MALFORMED),
        (b'{"type":"ack","batch":1,"records":[]}', ERR_MALFORMED),
        (b'{"type":"batch","batch":1,"records":{}}', ERR_MALFORMED),
        (b'{"type":"batch","batch":1,"records":[NaN]}', ERR_MALFORMED),
        (
            b'{"type":"batch","batch":1,"device":"' + OTHER.encode() + b'","records":[]}',
            "wrong_device",
        ),
        (b" " * (MAX_MESSAGE + 1), ERR_TOO_LARGE),
        (encode_batch(1, [b"{}"] * (MAX_BATCH_RECORDS + 1)), ERR_TOO_MANY),
    ],
)
def test_whole_messages_are_refused_with_a_code(data: bytes, code: str) -> None:
    with pytest.raises(CodecError) as info:
        parse_batch(data, now=NOW, device_id=DEVICE)
    assert info.value.code == code


def test_replies_round_trip() -> None:
    ack = Ack(7, 5, 1, ((3, "not_allowed"),))
    assert parse_reply(encode_ack(ack)) == ack
    assert parse_reply(encode_error(8, "malformed", "bad")) == ErrorReply(8, "malformed", "bad")


@given(st.binary(max_size=2048))
def test_any_bytes_give_a_batch_or_a_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        parse_batch(data, now=NOW, device_id=DEVICE)


record_values = st.dictionaries(
    st.sampled_from(["cpu.percent", "mem.percent", "disk.percent:/", "device.kv", "temp.c:cpu"]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    min_size=1,
)


@given(st.lists(st.tuples(st.integers(1, 2**53 - 1), record_values), max_size=30))
def test_encoded_batches_parse_back_to_the_same_records(items: list[tuple[int, dict]]) -> None:
    records = [Metrics(seq, NOW, values) for seq, values in items]
    data = encode_batch(1, [encode_record(r) for r in records])
    batch = parse_batch(data, now=NOW, device_id=DEVICE)
    assert batch.records == records and batch.rejected == []


def test_severity_table_exact_beats_pattern_and_longer_pattern_beats_shorter() -> None:
    table = SeverityTable({"E*": "warning", "E9*": "urgent", "E9001": "routine", "I*": "routine"})
    assert table.classify("E9001") is Severity.ROUTINE
    assert table.classify("E9002") is Severity.URGENT
    assert table.classify("E4012") is Severity.WARNING
    assert table.classify("X1") is Severity.WARNING  # the default
    with pytest.raises(ValueError, match="unknown severity"):
        SeverityTable({"E1": "fatal"})


def test_large_batches_are_compressed_and_bombs_refused() -> None:
    polls = [
        json.dumps(metrics(i, **{f"device.m{j}": 1.5 for j in range(20)})).encode()
        for i in range(1, 6)
    ]
    data = encode_batch(1, polls)
    assert data[:1] == b"\x78" and len(data) * 3 < sum(map(len, polls))
    assert [r.seq for r in parse_batch(data, now=NOW, device_id=DEVICE).records] == [1, 2, 3, 4, 5]
    assert encode_batch(1, polls[:1], compress=False)[:1] == b"{"
    bomb = zlib.compress(
        b'{"type":"batch","batch":1,"records":[' + b" " * (2 * MAX_MESSAGE) + b"]}"
    )
    for bad, code in (
        (bomb, ERR_TOO_LARGE),
        (b"\x78\x9cgarbage", ERR_MALFORMED),
        (data[:-4], ERR_MALFORMED),
    ):
        with pytest.raises(CodecError) as info:
            parse_batch(bad, now=NOW, device_id=DEVICE)
        assert info.value.code == code
