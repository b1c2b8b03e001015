"""protocol.rpc: the service rpc schema and bridge metadata (sans-I/O)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import rpc
from protocol.envelope import MessageError, encode_request
from protocol.ids import DeviceId

DEVICE = DeviceId("6f1c7a3e-1d2b-4c5d-8e9f-0a1b2c3d4e5f")


def test_valid_requests() -> None:
    assert rpc.parse_request(encode_request(1, "presence")) == rpc.Presence(1, None, 0, 500)
    assert rpc.parse_request(
        encode_request(2, "presence", device=DEVICE, offset=5, limit=10)
    ) == rpc.Presence(2, DEVICE, 5, 10)
    assert rpc.parse_request(encode_request(3, "disconnect", device=DEVICE)) == rpc.Disconnect(
        3,
        DEVICE,
        0,
    )
    assert rpc.parse_request(encode_request(4, "revoke")) == rpc.Revoke(4, None)
    assert rpc.parse_request(
        encode_request(5, "instruct", device=DEVICE, instruction={"action": "a"}, timeout=9)
    ) == rpc.Instruct(5, DEVICE, {"action": "a"}, 9)


@pytest.mark.parametrize(
    ("op", "args", "code"),
    [
        ("presence", {"limit": 0}, "bad_request"),
        ("presence", {"limit": 1001}, "bad_request"),
        ("presence", {"offset": -1}, "bad_request"),
        ("presence", {"device": DEVICE.upper()}, "bad_request"),
        ("disconnect", {}, "bad_request"),
        ("disconnect", {"device": DEVICE, "retry_after_ms": 10**9}, "bad_request"),
        ("instruct", {"device": DEVICE}, "bad_request"),
        (
            "instruct",
            {"device": DEVICE, "instruction": {"action": "a"}, "timeout": 0},
            "bad_request",
        ),
        (
            "instruct",
            {"device": DEVICE, "instruction": {"action": "a"}, "timeout": True},
            "bad_request",
        ),
        ("explode", {}, "unknown_op"),
    ],
)
def test_invalid_requests(op: str, args: dict[str, object], code: str) -> None:
    with pytest.raises(MessageError) as info:
        rpc.parse_request(encode_request(7, op, **args))
    assert (info.value.code, info.value.request_id) == (code, 7)


def test_replies_are_not_requests() -> None:
    with pytest.raises(MessageError):
        rpc.parse_request(b'{"id": 1, "ok": true}')


def test_bridge_metadata() -> None:
    bridge = rpc.parse_bridge({"device": DEVICE, "channel_kind": "desktop", "meta": {"w": 1}})
    assert bridge == rpc.Bridge(DEVICE, "desktop", {"w": 1})
    assert rpc.parse_bridge({"device": DEVICE, "channel_kind": "files"}).meta == {}
    for bad in (
        {"device": DEVICE, "channel_kind": "control"},
        {"device": DEVICE, "channel_kind": "rpc"},
        {"device": DEVICE, "channel_kind": "Desktop"},
        {"device": DEVICE, "channel_kind": "x" * 33},
        {"device": DEVICE, "channel_kind": "desktop", "meta": []},
        {"device": "nope", "channel_kind": "desktop"},
        {"channel_kind": "desktop"},
    ):
        with pytest.raises(MessageError):
            rpc.parse_bridge(bad)


@given(st.binary(max_size=300))
def test_parse_request_raises_only_message_errors(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        rpc.parse_request(data)
