"""The control-channel schema (sans-I/O): bytes in, typed messages out.

The agent opens one channel of kind ``control`` right after connecting. Messages use
the envelope in `protocol.envelope` (one JSON object per channel message, at most
MAX_MESSAGE bytes).

Agent -> relay requests:

* ``{"id": 1, "op": "hello", "version": "1.2.3", "capabilities": ["telemetry", ...]}``
  -> ``{"id": 1, "ok": true, "relay_id": "relay-a", "time": 1732730000.0}``
  (``time`` is the relay's Unix time, so the agent can report clock skew).
* ``{"id": 2, "op": "renew", "csr": "-----BEGIN CERTIFICATE REQUEST-----..."}``
  -> ``{"id": 2, "ok": true, "device_id": "...", "certificate": PEM, "ca_certificate": PEM}``
  The identity in the new certificate comes from the authenticated TLS peer
  certificate and the database, never from the message or the CSR subject. Errors:
  ``bad_csr``, ``key_too_weak``, ``revoked``, ``busy`` (one renewal per RENEW_INTERVAL),
  ``unavailable`` (this relay does not sign), ``internal_error``.
* ``{"id": 3, "op": "event", "name": "desktop.state", ...fields}``: a fact for the relay
  to record; no reply. The relay hands the fields to the feature that registered the
  name (`ControlContext.events`); unknown names are counted and dropped.

Relay -> agent requests (the agent acts only on these, R24):

* ``{"id": 7, "op": "instruct", "instruction": {"action": "...", ...}}``
  -> ``{"id": 7, "ok": true, "result": {...}}`` or an error reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from protocol.envelope import (
    ERR_BAD_REQUEST,
    ERR_TOO_LARGE,
    ERR_UNKNOWN_OP,
    MessageError,
    Reply,
    Request,
    RequestId,
    decode,
    string_arg,
)

# A CSR is ~0.5 KiB and a certificate chain a few KiB; instructions are small. 64 KiB
# leaves ample room and bounds what one agent can make the relay parse.
MAX_MESSAGE = 64 * 1024
MAX_VERSION_LENGTH = 64
MAX_CAPABILITIES = 32
MAX_CAPABILITY_LENGTH = 64
MAX_CSR_LENGTH = 8 * 1024
MAX_INSTRUCTION = 16 * 1024
MAX_EVENT_NAME = 64
# Renewal signs a certificate and writes the database; an agent gets one per this
# many seconds (it needs one per weeks).
RENEW_INTERVAL = 60.0

ERR_UNAVAILABLE = "unavailable"


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
class Event:
    """An agent -> relay fact; ``fields`` are unchecked (the named feature checks them)."""

    id: RequestId
    name: str
    fields: dict[str, Any]


Message = Hello | Renew | Event | Instruct | Reply


def parse(data: bytes | str) -> Message:
    """Decode one control message. Raises MessageError (never anything else)."""
    msg = decode(data, MAX_MESSAGE)
    if isinstance(msg, Reply):
        return msg
    if msg.op == "hello":
        return Hello(
            msg.id,
            string_arg(msg, "version", MAX_VERSION_LENGTH) or "",
            _capabilities(msg),
        )
    if msg.op == "renew":
        return Renew(msg.id, string_arg(msg, "csr", MAX_CSR_LENGTH) or "")
    if msg.op == "event":
        name = string_arg(msg, "name", MAX_EVENT_NAME) or ""
        return Event(msg.id, name, {k: v for k, v in msg.args.items() if k != "name"})
    if msg.op == "instruct":
        return Instruct(msg.id, validate_instruction(msg.args.get("instruction"), msg.id))
    raise MessageError(ERR_UNKNOWN_OP, "unknown op", msg.id)


def validate_instruction(value: Any, request_id: RequestId | None = None) -> dict[str, Any]:
    """An instruction is a JSON object with a string "action", at most MAX_INSTRUCTION bytes."""
    if not isinstance(value, dict) or not isinstance(value.get("action"), str):
        raise MessageError(
            ERR_BAD_REQUEST, 'instruction must be an object with a string "action"', request_id
        )
    if len(json.dumps(value, separators=(",", ":"))) > MAX_INSTRUCTION:
        raise MessageError(
            ERR_TOO_LARGE, f"instruction exceeds {MAX_INSTRUCTION} bytes", request_id
        )
    return value


def _capabilities(req: Request) -> tuple[str, ...]:
    value = req.args.get("capabilities", [])
    if (
        not isinstance(value, list)
        or len(value) > MAX_CAPABILITIES
        or not all(isinstance(c, str) and 0 < len(c) <= MAX_CAPABILITY_LENGTH for c in value)
    ):
        raise MessageError(
            ERR_BAD_REQUEST,
            f'"capabilities" must be a list of <= {MAX_CAPABILITIES} short strings',
            req.id,
        )
    return tuple(value)
