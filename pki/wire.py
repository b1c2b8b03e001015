"""JSON messages of enrolment (``/enroll``) and renewal (over the tunnel), for both ends.

Request::

    {"token": "olk_...", "csr": "-----BEGIN CERTIFICATE REQUEST-----..."}   # enrolment
    {"csr": "..."}                                                          # renewal

Optional informational fields: ``hostname``, ``model`` (strings; never identity).
Answer::

    {"ok": true, "device_id": "<uuid4>", "certificate": PEM, "ca_certificate": PEM}
    {"ok": false, "error": "<code>", "message": "<text for a human>"}

Messages are UTF-8 JSON objects; the server refuses bigger than
:data:`MAX_REQUEST_BYTES`, the client bigger than :data:`MAX_RESPONSE_BYTES`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

ENROLL_SUBPROTOCOL = "outlink.enroll.v1"
#: A token (~50 B) + a CSR (<= 8 KiB, RSA 8192) + small extras fit with room to spare.
MAX_REQUEST_BYTES = 16 * 1024
#: Device certificate + CA certificate are ~1.5 KiB; leave room for larger future chains.
MAX_RESPONSE_BYTES = 64 * 1024
#: Informational fields are one line each.
MAX_INFO_LEN = 255


class ErrorCode(StrEnum):
    """Why the server refused; stable strings that scripts and the agent can match."""

    INVALID_REQUEST = "invalid_request"  # not JSON, wrong shape, too large, timed out
    # Unknown, used, expired or revoked: deliberately one code, so probing learns nothing.
    INVALID_TOKEN = "invalid_token"  # noqa: S105
    BAD_CSR = "bad_csr"  # not a CSR, or its signature does not verify
    KEY_TOO_WEAK = "key_too_weak"  # key type/size not accepted
    REVOKED = "revoked"  # renewal for a revoked (or unknown) device
    INTERNAL_ERROR = "internal_error"  # our fault; details are in the server's log only


class Refused(Exception):
    """A refusal with a wire code. Raised by server-side handlers, and by
    :func:`decode_response` when the server answered ``ok: false``.

    ``message`` is written for the peer, so it must never carry exception text.
    """

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message


class MalformedResponse(ValueError):
    """The server's answer is not a well-formed response (client side)."""


@dataclass(frozen=True, slots=True)
class CertRequest:
    """A decoded enrolment or renewal request (``token`` is None for renewal)."""

    csr_pem: bytes
    token: str | None = None
    hostname: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    """A decoded success answer."""

    device_id: str
    certificate_pem: bytes
    ca_certificate_pem: bytes


def _load_object(data: bytes | str, limit: int) -> dict[str, Any] | None:
    if len(data) > limit:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _str_field(obj: dict[str, Any], name: str, limit: int) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise Refused(ErrorCode.INVALID_REQUEST, f"'{name}' must be a string of <= {limit} chars")
    return value


def encode_request(
    csr_pem: bytes,
    *,
    token: str | None = None,
    hostname: str | None = None,
    model: str | None = None,
) -> str:
    """The request as JSON text (send it as a text WebSocket message)."""
    obj: dict[str, str] = {"csr": csr_pem.decode("ascii")}
    if token is not None:
        obj["token"] = token
    if hostname is not None:
        obj["hostname"] = hostname[:MAX_INFO_LEN]
    if model is not None:
        obj["model"] = model[:MAX_INFO_LEN]
    return json.dumps(obj)


def decode_request(data: bytes | str, *, need_token: bool) -> CertRequest:
    """Parse a request; raise :class:`Refused` (``invalid_request``) if it is malformed."""
    obj = _load_object(data, MAX_REQUEST_BYTES)
    if obj is None:
        raise Refused(
            ErrorCode.INVALID_REQUEST, f"expected one JSON object of <= {MAX_REQUEST_BYTES} bytes"
        )
    csr = _str_field(obj, "csr", MAX_REQUEST_BYTES)
    token = _str_field(obj, "token", MAX_REQUEST_BYTES)
    if csr is None or (need_token and token is None):
        fields = "'token' and 'csr'" if need_token else "'csr'"
        raise Refused(ErrorCode.INVALID_REQUEST, f"the request needs {fields}")
    if not csr.isascii():
        raise Refused(ErrorCode.BAD_CSR, "the CSR must be PEM text")
    return CertRequest(
        csr_pem=csr.encode("ascii"),
        token=token,
        hostname=_str_field(obj, "hostname", MAX_INFO_LEN),
        model=_str_field(obj, "model", MAX_INFO_LEN),
    )


def encode_issued(device_id: str, certificate_pem: bytes, ca_certificate_pem: bytes) -> bytes:
    """A success answer."""
    return json.dumps(
        {
            "ok": True,
            "device_id": device_id,
            "certificate": certificate_pem.decode("ascii"),
            "ca_certificate": ca_certificate_pem.decode("ascii"),
        }
    ).encode()


def encode_refusal(refusal: Refused) -> bytes:
    """A refusal answer."""
    return json.dumps({"ok": False, "error": refusal.code, "message": refusal.message}).encode()


def decode_response(data: bytes | str) -> Issued:
    """Parse an answer: return :class:`Issued`, raise :class:`Refused` or
    :class:`MalformedResponse`."""
    obj = _load_object(data, MAX_RESPONSE_BYTES)
    if obj is None:
        raise MalformedResponse("the answer is not a JSON object of acceptable size")
    if obj.get("ok") is False:
        code, message = obj.get("error"), obj.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            raise MalformedResponse("refusal without 'error' and 'message' strings")
        raise Refused(code[:64], message[: MAX_INFO_LEN * 4])
    fields = [obj.get(k) for k in ("device_id", "certificate", "ca_certificate")]
    if obj.get("ok") is not True or not all(isinstance(f, str) and f.isascii() for f in fields):
        raise MalformedResponse("success answer without device_id/certificate/ca_certificate")
    device_id, cert, ca = (str(f) for f in fields)
    return Issued(device_id, cert.encode("ascii"), ca.encode("ascii"))
