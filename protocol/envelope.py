"""The JSON request/response envelope shared by the control and rpc channels (sans-I/O).

Each channel message is one UTF-8 JSON object. A request carries ``"id"`` and
``"op"``; a response carries the ``"id"`` of the request it answers and ``"ok"``:

    {"id": 1, "op": "presence"}                      request
    {"id": 1, "ok": true, ...}                       success
    {"id": 1, "ok": false, "error": "<code>", "message": "<short text>"}

Each side numbers its own requests, so ids never collide across directions. A
message that cannot be parsed far enough to know its id is answered with
``"id": null``. Error codes are short stable strings (ERR_*); messages are for
humans and never carry exception text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Ids are echoed back verbatim; keep them short and JSON-portable.
MAX_ID_LENGTH = 64
MAX_SAFE_INT = 2**53 - 1

ERR_BAD_REQUEST = "bad_request"
ERR_UNKNOWN_OP = "unknown_op"
ERR_TOO_LARGE = "too_large"
ERR_BUSY = "busy"
ERR_TIMEOUT = "timeout"
ERR_INTERNAL = "internal"

RequestId = int | str


class MessageError(Exception):
    """A message is invalid. `code` and `message` are safe to send to the peer."""

    def __init__(
        self, code: str, message: str, request_id: RequestId | None = None, **extra: str
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.extra = extra  # more fields for the error reply, e.g. {"agent_error": code}


@dataclass(frozen=True, slots=True)
class Request:
    """A request whose envelope is valid; `args` are the remaining fields, unchecked."""

    id: RequestId
    op: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    """A response to a request the receiving side sent earlier."""

    id: RequestId
    ok: bool
    body: dict[str, Any]

    @property
    def error(self) -> str | None:
        code = self.body.get("error")
        return code if isinstance(code, str) else None


def decode(data: bytes | str, limit: int) -> Request | Reply:
    """Check size, JSON, object shape and id. Raises MessageError (never anything else)."""
    if len(data) > limit:
        raise MessageError(ERR_TOO_LARGE, f"message exceeds {limit} bytes")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise MessageError(ERR_BAD_REQUEST, "not valid JSON") from None
    if not isinstance(obj, dict):
        raise MessageError(ERR_BAD_REQUEST, "message must be a JSON object")
    request_id = _parse_id(obj.pop("id", None))
    if "op" in obj:
        op = obj.pop("op")
        if not isinstance(op, str):
            raise MessageError(ERR_BAD_REQUEST, '"op" must be a string', request_id)
        return Request(request_id, op, obj)
    ok = obj.pop("ok", None)
    if not isinstance(ok, bool):
        raise MessageError(ERR_BAD_REQUEST, 'a message needs "op" or a boolean "ok"', request_id)
    return Reply(request_id, ok, obj)


def encode_request(request_id: RequestId, op: str, **fields: Any) -> bytes:
    return _dump({"id": request_id, "op": op, **fields})


def encode_reply(request_id: RequestId, **fields: Any) -> bytes:
    return _dump({"id": request_id, "ok": True, **fields})


def encode_error(request_id: RequestId | None, code: str, message: str, **fields: Any) -> bytes:
    return _dump({"id": request_id, "ok": False, "error": code, "message": message, **fields})


def string_arg(
    req: Request, key: str, limit: int, *, required: bool = True, empty: bool = False
) -> str | None:
    """A string argument of at most `limit` characters (None if absent and optional)."""
    value = req.args.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise MessageError(
            ERR_BAD_REQUEST, f'"{key}" must be a non-empty string of <= {limit} chars', req.id
        )
    return value


def int_arg(req: Request, key: str, default: int, low: int, high: int) -> int:
    """An integer argument in [low, high], `default` if absent."""
    value = req.args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(
            ERR_BAD_REQUEST, f'"{key}" must be an integer in [{low}, {high}]', req.id
        )
    return value


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN / Infinity are not JSON


def _parse_id(value: Any) -> RequestId:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SAFE_INT:
        return value
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    raise MessageError(ERR_BAD_REQUEST, "id must be a non-negative integer or a short string")
