"""The service `rpc` channel schema (sans-I/O): requests a service client may make.

Envelope: `protocol.envelope`. Ops and their arguments:

* ``presence`` ``{"device"?: id, "offset"?: int, "limit"?: int}`` -> ``{"relay_id",
  "total", "devices": [{"device_id", "customer", "site", "peer", "connected_at",
  "agent_version"}]}`` (devices on THIS relay, sorted by id, paged).
* ``disconnect`` ``{"device": id, "retry_after_ms"?: int}`` -> ``{"disconnected": bool}``
  (GOAWAY then close; the agent comes back after retry_after_ms).
* ``revoke`` ``{"device"?: id}`` -> ``{"revoked": bool, "closed": bool}``: reload the
  revocation cache from the database now and close tunnels of revoked devices. The
  database is the authority: the portal revokes there first (`pki.revocation`).
* ``instruct`` ``{"device": id, "instruction": {"action": ...}, "timeout"?: seconds}``
  -> ``{"result": <the agent's answer>}``; errors ``offline``, ``timeout``,
  ``agent_error`` (the agent answered ok:false; its code is in ``agent_error``).

A ``bridge`` channel's OPEN metadata is
``{"device": id, "channel_kind": "desktop", "meta": {...}}`` (`parse_bridge`; the
tunnel reserves ``kind`` for the channel's own kind, ``bridge``); the relay opens a
channel of ``channel_kind`` on the device's tunnel with ``meta`` plus
``"requested_by": <service name>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from protocol.control import validate_instruction
from protocol.envelope import (
    ERR_BAD_REQUEST,
    ERR_UNKNOWN_OP,
    MessageError,
    Reply,
    Request,
    RequestId,
    decode,
    int_arg,
)
from protocol.ids import DeviceId, parse_device_id

# Requests are small; the largest is an instruction (<= 16 KiB) plus envelope.
MAX_REQUEST = 32 * 1024
# One presence page stays well under the channel's max message (~120 B per device).
MAX_PAGE = 1000
DEFAULT_PAGE = 500
# An instruction's answer comes from a person-free agent in well under this; a
# service may ask for less.
MAX_INSTRUCT_TIMEOUT = 120
DEFAULT_INSTRUCT_TIMEOUT = 30
# Agents reconnect at once after disconnect unless asked to wait; cap the wait an
# RPC can ask for at ten minutes.
MAX_RETRY_AFTER_MS = 600_000

# Bridged kinds name channels on the agent's tunnel; the relay's own kinds are not
# reachable through a bridge.
BRIDGE_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
RESERVED_KINDS = frozenset({"control", "rpc", "bridge"})

ERR_OFFLINE = "offline"
ERR_AGENT_ERROR = "agent_error"


@dataclass(frozen=True, slots=True)
class Presence:
    id: RequestId
    device: DeviceId | None
    offset: int
    limit: int


@dataclass(frozen=True, slots=True)
class Disconnect:
    id: RequestId
    device: DeviceId
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class Revoke:
    id: RequestId
    device: DeviceId | None


@dataclass(frozen=True, slots=True)
class Instruct:
    id: RequestId
    device: DeviceId
    instruction: dict[str, Any]
    timeout: int


RpcRequest = Presence | Disconnect | Revoke | Instruct


@dataclass(frozen=True, slots=True)
class Bridge:
    device: DeviceId
    kind: str
    meta: dict[str, Any]


def parse_request(data: bytes | str) -> RpcRequest:
    """Decode one rpc request. Raises MessageError (never anything else)."""
    msg = decode(data, MAX_REQUEST)
    if isinstance(msg, Reply):
        raise MessageError(ERR_BAD_REQUEST, "the relay sends no requests on rpc", msg.id)
    if msg.op == "presence":
        return Presence(
            msg.id,
            _optional_device(msg),
            int_arg(msg, "offset", 0, 0, 10**9),
            int_arg(msg, "limit", DEFAULT_PAGE, 1, MAX_PAGE),
        )
    if msg.op == "disconnect":
        return Disconnect(
            msg.id,
            _device(msg),
            int_arg(msg, "retry_after_ms", 0, 0, MAX_RETRY_AFTER_MS),
        )
    if msg.op == "revoke":
        return Revoke(msg.id, _optional_device(msg))
    if msg.op == "instruct":
        return Instruct(
            msg.id,
            _device(msg),
            validate_instruction(msg.args.get("instruction"), msg.id),
            int_arg(msg, "timeout", DEFAULT_INSTRUCT_TIMEOUT, 1, MAX_INSTRUCT_TIMEOUT),
        )
    raise MessageError(ERR_UNKNOWN_OP, "unknown op", msg.id)


def parse_bridge(meta: dict[str, Any]) -> Bridge:
    """Validate a bridge OPEN's metadata. Raises MessageError (code bad_request)."""
    req = Request(0, "bridge", meta)
    kind = meta.get("channel_kind")
    if not isinstance(kind, str) or not BRIDGE_KIND.fullmatch(kind) or kind in RESERVED_KINDS:
        raise MessageError(ERR_BAD_REQUEST, '"channel_kind" must name an agent channel kind')
    inner = meta.get("meta", {})
    if not isinstance(inner, dict):
        raise MessageError(ERR_BAD_REQUEST, '"meta" must be an object')
    return Bridge(_device(req), kind, inner)


def _device(req: Request) -> DeviceId:
    value = req.args.get("device")
    if isinstance(value, str):
        try:
            return parse_device_id(value)
        except ValueError:
            pass
    raise MessageError(ERR_BAD_REQUEST, '"device" must be a device id (uuid4)', req.id)


def _optional_device(req: Request) -> DeviceId | None:
    return None if req.args.get("device") is None else _device(req)
