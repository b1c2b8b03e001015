"""The control-channel schema and envelope: bad input becomes a MessageError with a safe code."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import control, envelope
from protocol.control import Hello, Instruct, Renew
from protocol.envelope import MessageError, Reply


def test_hello_renew_instruct_reply_roundtrip() -> None:
    hello = control.parse(envelope.encode_request(1, "hello", version="1.0", capabilities=["x"]))
    assert hello == Hello(1, "1.0", ("x",))
    renew = control.parse(envelope.encode_request("r1", "renew", csr="PEM"))
    assert renew == Renew("r1", "PEM")
    instruct = control.parse(envelope.encode_request(3, "instruct", instruction={"action": "a"}))
    assert instruct == Instruct(3, {"action": "a"})
    reply = control.parse(envelope.encode_reply(3, result={"x": 1}))
    assert reply == Reply(3, True, {"result": {"x": 1}})
    error = control.parse(envelope.encode_error(4, "busy", "later"))
    assert error == Reply(4, False, {"error": "busy", "message": "later"})


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff", "bad_request"),
        (b"[1]", "bad_request"),
        (b'{"op":"hello"}', "bad_request"),  # no id
        (b'{"id":true,"op":"hello","version":"1"}', "bad_request"),
        (b'{"id":-1,"op":"hello","version":"1"}', "bad_request"),
        (b'{"id":1,"op":"hello"}', "bad_request"),
        (b'{"id":1,"op":"hello","version":"1","capabilities":[1]}', "bad_request"),
        (b'{"id":1,"op":"renew","csr":""}', "bad_request"),
        (b'{"id":1,"op":"launch"}', "unknown_op"),
        (b'{"id":1,"op":"instruct","instruction":{}}', "bad_request"),
        (b'{"id":1}', "bad_request"),
        (b'{"id":1,"op":5}', "bad_request"),
        (b'{"id":1,"op":"hello","version":NaN}', "bad_request"),
        (b"[" * 100_000, "too_large"),
        (b"[" * 60_000, "bad_request"),  # deep nesting: RecursionError is caught
    ],
)
def test_bad_messages(data: bytes, code: str) -> None:
    with pytest.raises(MessageError) as info:
        control.parse(data)
    assert info.value.code == code


def test_error_keeps_request_id_when_known() -> None:
    with pytest.raises(MessageError) as info:
        control.parse(b'{"id":9,"op":"nope"}')
    assert info.value.request_id == 9
    assert json.loads(envelope.encode_error(9, info.value.code, info.value.message))["id"] == 9


def test_oversized_instruction() -> None:
    with pytest.raises(MessageError) as info:
        control.validate_instruction({"action": "x", "pad": "y" * control.MAX_INSTRUCTION})
    assert info.value.code == "too_large"


@given(st.binary(max_size=512) | st.text(max_size=512).map(str.encode))
def test_parse_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        control.parse(data)
