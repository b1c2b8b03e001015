"""The ``/enroll`` endpoint: one-time token + CSR in, device certificate out.

:class:`EnrollmentService` is the sans-I/O core (bytes in, bytes out, blocking
database and signing work); :func:`serve_enrollment` is the thin WebSocket
handler the relay mounts at ``/enroll`` (subprotocol ``outlink.enroll.v1``, no
client certificate: the token is the credential). One request per connection.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from pki.ca import CertificateAuthority
from pki.fleet import certify_device, create_device
from pki.issue import DEFAULT_DEVICE_LIFETIME, BadCSRError, load_csr
from pki.keys import WeakKeyError
from pki.serials import serial_hex
from pki.tokens import consume_token
from pki.wire import (
    ENROLL_SUBPROTOCOL,
    ErrorCode,
    Refused,
    decode_request,
    encode_issued,
    encode_refusal,
)
from store.db import make_sessionmaker
from store.models import EnrollmentToken, Site

log = logging.getLogger(__name__)

#: The client sends its one message right after the handshake; 10 s covers slow links
#: and proxies while not letting idle sockets pile up on an unauthenticated endpoint.
READ_TIMEOUT = 10.0
#: WebSocket close code for "policy violation" (RFC 6455): wrong subprotocol.
CLOSE_POLICY_VIOLATION = 1008

_INVALID_TOKEN = Refused(
    ErrorCode.INVALID_TOKEN, "the enrolment token is not valid (unknown, used, expired or revoked)"
)
_INTERNAL = Refused(ErrorCode.INTERNAL_ERROR, "enrolment failed on the server; try again later")


class EnrollmentService:
    """Turns one enrolment request into one answer; every refusal has a wire code.

    ``handle`` blocks (database, signing): call it through ``asyncio.to_thread``.
    The token is consumed in the same transaction that creates the device and
    records its certificate, so a failure anywhere gives the token back.
    """

    def __init__(
        self,
        sessions: Engine | sessionmaker[Session],
        ca: CertificateAuthority,
        cert_lifetime: timedelta = DEFAULT_DEVICE_LIFETIME,
    ) -> None:
        self._sessions = make_sessionmaker(sessions) if isinstance(sessions, Engine) else sessions
        self._ca = ca
        self._lifetime = cert_lifetime

    def handle(self, request_bytes: bytes, peer_addr: str, now: datetime | None = None) -> bytes:
        """Answer one request from ``peer_addr`` (used for logs only); never raises."""
        try:
            return self._enroll(request_bytes, peer_addr, now or datetime.now(UTC))
        except Refused as refusal:
            log.info("! enrolment from %s refused: %s", peer_addr, refusal.code)
            return encode_refusal(refusal)
        except Exception:
            log.exception("! enrolment from %s failed", peer_addr)
            return encode_refusal(_INTERNAL)

    def _enroll(self, request_bytes: bytes, peer_addr: str, now: datetime) -> bytes:
        log.debug("< enrolment request from %s (%d bytes)", peer_addr, len(request_bytes))
        req = decode_request(request_bytes, need_token=True)
        assert req.token is not None  # decode_request(need_token=True) guarantees it
        # The CSR is checked before the token, so a broken CSR never burns a token.
        try:
            public_key = load_csr(req.csr_pem).public_key()
        except BadCSRError as exc:
            raise Refused(ErrorCode.BAD_CSR, str(exc)) from None
        except WeakKeyError as exc:
            raise Refused(ErrorCode.KEY_TOO_WEAK, str(exc)) from None
        with self._sessions() as session, session.begin():
            grant = consume_token(session, req.token, now=now)
            if grant is None:
                raise _INVALID_TOKEN
            site = session.get_one(Site, grant.site_id)
            device = create_device(session, site, now=now)
            device.hostname, device.model = req.hostname, req.model
            cert = certify_device(
                session, self._ca, device, public_key, lifetime=self._lifetime, now=now
            )
            session.get_one(EnrollmentToken, grant.token_id).used_by_device_id = device.id
            device_id, where = device.id, f"{site.customer.slug}/{site.slug}"
        log.info(
            "= enrolled device %s (%s) from %s with token %d, serial %s",
            device_id,
            where,
            peer_addr,
            grant.token_id,
            serial_hex(cert.serial_number),
        )
        return encode_issued(
            device_id, cert.public_bytes(serialization.Encoding.PEM), self._ca.cert_pem
        )


def _peer(ws: ServerConnection) -> str:
    addr = ws.remote_address
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


async def serve_enrollment(
    ws: ServerConnection, service: EnrollmentService, *, read_timeout: float = READ_TIMEOUT
) -> None:
    """Read one request, answer it, close. Mount at ``/enroll``.

    The relay's ``max_size`` bounds what websockets buffers; requests above
    ``MAX_REQUEST_BYTES`` are then refused as ``invalid_request``.
    """
    peer = _peer(ws)
    if ws.subprotocol != ENROLL_SUBPROTOCOL:
        log.info("! enrolment from %s without subprotocol %s", peer, ENROLL_SUBPROTOCOL)
        await ws.close(CLOSE_POLICY_VIOLATION, f"subprotocol {ENROLL_SUBPROTOCOL} required")
        return
    try:
        async with asyncio.timeout(read_timeout):
            message = await ws.recv()
    except TimeoutError:
        refusal = Refused(ErrorCode.INVALID_REQUEST, f"no request within {read_timeout:g} s")
        answer = encode_refusal(refusal)
    except ConnectionClosed:
        log.debug("= enrolment client %s left before sending a request", peer)
        return
    else:
        data = message.encode() if isinstance(message, str) else message
        answer = await asyncio.to_thread(service.handle, data, peer)
    try:
        await ws.send(answer.decode())
        await ws.close()
    except ConnectionClosed:
        log.debug("= enrolment client %s left before the answer", peer)
