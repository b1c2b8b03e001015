"""The control-channel message schema (sans-I/O): bytes in, typed messages out.

The agent opens one channel of kind ``control`` right after connecting. Each channel
message is one UTF-8 JSON object of at most MAX_MESSAGE bytes.

Requests carry ``"op"``; responses carry ``"ok"`` and the ``"id"`` of the request they
answer. Each side numbers its own requests, so ids never collide across directions.

Agent -> relay requests:

* ``{"id": 1, "op": "hello", "version": "1.2.3", "capabilities": ["telemetry", ...]}``
  -> ``{"id": 1, "ok": true, "relay_id": "relay-a", "time": 1732730000.0}``
* ``{"id": 2, "op": "renew", "csr": "-----BEGIN CERTIFICATE REQUEST-----..."}``
  -> ``{"id": 2, "ok": true, "certificate": PEM, "ca_certificate": PEM}``.
  The identity in the new certificate comes from the authenticated TLS peer
  certificate, never from the message or the CSR subject.

Relay -> agent requests (the agent acts only on these, R24):

* ``{"id": 7, "op": "instruct", "instruction": {"action": "...", ...}}``
  -> ``{"id": 7, "ok": true, "result": {...}}``

Any request may be answered with
``{"id": N, "ok": false, "error": "<code>", "message": "<short text>"}``; codes are
the ERR_* constants below. A message that cannot be parsed at all is answered with
``"id": null``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# A CSR is ~0.5 KiB and a certificate chain a few KiB; instructions are small. 64 KiB
# leaves ample room and bounds what one agent can make the relay parse.
MAX_MESSAGE = 64 * 1024
# Ids are echoed back verbatim; keep them short and JSON-portable.
MAX_ID_LENGTH = 64
MAX_SAFE_INT = 2**53 - 1
MAX_VERSION_LENGTH = 64
MAX_CAPABILITIES = 32
MAX_CAPABILITY_LENGTH = 64
MAX_CSR_LENGTH = 8 * 1024
MAX_INSTRUCTION = 16 * 1024

ERR_BAD_REQUEST = "bad_request"
ERR_UNKNOWN_OP = "unknown_op"
ERR_TOO_LARGE = "too_large"
ERR_RENEW_FAILED = "renew_failed"
ERR_INTERNAL = "internal"
ERR_BUSY = "busy"

RequestId = int | str


class ControlError(Exception):
    """A message is invalid. `code` and `message` are safe to send to the peer."""

    def __init__(self, code: str, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Hello:
    id: RequestId
    version: str
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Renew:
    id: RequestId
    csr: str


@dataclass(frozen=True, slots=True)
class Instruct:
    """A relay -> agent request; parsed here so the agent can share this module."""

    id: RequestId
    instruction: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    """A response to a request the receiving side sent earlier."""

    id: RequestId
    ok: bool
    body: dict[str, Any]


AgentRequest = Hello | Renew
Message = Hello | Renew | Instruct | Reply


def parse(data: bytes | str) -> Message:
    """Decode one control message. Raises ControlError (never anything else)."""
    if len(data) > MAX_MESSAGE:
        raise ControlError(ERR_TOO_LARGE, f"message exceeds {MAX_MESSAGE} bytes")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ControlError(ERR_BAD_REQUEST, "not valid JSON") from None
    if not isinstance(obj, dict):
        raise ControlError(ERR_BAD_REQUEST, "message must be a JSON object")
    request_id = _parse_id(obj.get("id"))
    if "op" not in obj:
        return _parse_reply(obj, request_id)
    op = obj["op"]
    if op == "hello":
        return Hello(
            request_id,
            _string(obj, "version", MAX_VERSION_LENGTH, request_id),
            _capabilities(obj.get("capabilities", []), request_id),
        )
    if op == "renew":
        return Renew(request_id, _string(obj, "csr", MAX_CSR_LENGTH, request_id))
    if op == "instruct":
        return Instruct(request_id, validate_instruction(obj.get("instruction"), request_id))
    raise ControlError(ERR_UNKNOWN_OP, "unknown op", request_id)


def validate_instruction(value: Any, request_id: RequestId | None = None) -> dict[str, Any]:
    """An instruction is a JSON object with a string "action", at most MAX_INSTRUCTION bytes."""
    if not isinstance(value, dict) or not isinstance(value.get("action"), str):
        raise ControlError(
            ERR_BAD_REQUEST, 'instruction must be an object with a string "action"', request_id
        )
    if len(json.dumps(value, separators=(",", ":"))) > MAX_INSTRUCTION:
        raise ControlError(
            ERR_TOO_LARGE, f"instruction exceeds {MAX_INSTRUCTION} bytes", request_id
        )
    return value


def encode_request(request_id: RequestId, op: str, **fields: Any) -> bytes:
    return _dump({"id": request_id, "op": op, **fields})


def encode_reply(request_id: RequestId, **fields: Any) -> bytes:
    return _dump({"id": request_id, "ok": True, **fields})


def encode_error(request_id: RequestId | None, code: str, message: str) -> bytes:
    return _dump({"id": request_id, "ok": False, "error": code, "message": message})


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN / Infinity are not JSON


def _parse_id(value: Any) -> RequestId:
    if isinstance(value, bool):
        raise ControlError(ERR_BAD_REQUEST, "id must be an integer or a string")
    if isinstance(value, int) and 0 <= value <= MAX_SAFE_INT:
        return value
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    raise ControlError(ERR_BAD_REQUEST, "id must be a non-negative integer or a short string")


def _parse_reply(obj: dict[str, Any], request_id: RequestId) -> Reply:
    ok = obj.get("ok")
    if not isinstance(ok, bool):
        raise ControlError(ERR_BAD_REQUEST, 'a message needs "op" or a boolean "ok"', request_id)
    body = {k: v for k, v in obj.items() if k not in ("id", "ok")}
    return Reply(request_id, ok, body)


def _string(obj: dict[str, Any], key: str, limit: int, request_id: RequestId) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ControlError(
            ERR_BAD_REQUEST, f'"{key}" must be a non-empty string of <= {limit} chars', request_id
        )
    return value


def _capabilities(value: Any, request_id: RequestId) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_CAPABILITIES
        or not all(isinstance(c, str) and 0 < len(c) <= MAX_CAPABILITY_LENGTH for c in value)
    ):
        raise ControlError(
            ERR_BAD_REQUEST,
            f'"capabilities" must be a list of <= {MAX_CAPABILITIES} short strings',
            request_id,
        )
    return tuple(value)
