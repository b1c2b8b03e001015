"""``outlink-agent enroll``: get this device its certificate with a one-time token.

Order matters (R24, R27): the private key is made and written (0600,
atomically) before any network I/O; the relay's certificate is verified
against the pinned CA and the URL's hostname before a byte of the request is
sent; the answer is checked (our key, chains to the pinned CA, names a device)
before anything else is written. Only the CSR -- never the key -- leaves the device.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, WebSocketException

from agent.identity import IdentityFiles, verify_device_certificate
from pki.identity import DeviceIdentity, IdentityError
from pki.issue import CertificateMismatchError
from pki.keys import generate_key, write_file_atomic, write_private_key
from pki.renewal import build_csr
from pki.tls import client_context
from pki.wire import (
    ENROLL_SUBPROTOCOL,
    MAX_RESPONSE_BYTES,
    MalformedResponse,
    Refused,
    decode_response,
    encode_request,
)

log = logging.getLogger(__name__)

#: Connect (incl. proxy and TLS) and answer each get this long; signing is fast.
ENROLL_TIMEOUT = 30.0


class EnrollmentError(Exception):
    """Enrolment did not happen. ``code`` is stable (for scripts); the message is for humans."""

    code = "enrollment_failed"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RelayCertificateError(EnrollmentError):
    """The endpoint's certificate failed verification against the pinned CA or hostname.

    Nothing was sent. This needs a human: a TLS-intercepting proxy, a wrong CA
    file, or a wrong URL -- retrying will not fix it.
    """

    code = "relay_certificate"


class AlreadyEnrolledError(EnrollmentError):
    """The identity directory already holds a certificate (pass ``force=True`` to replace)."""

    code = "already_enrolled"


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "wss" or not parts.hostname:
        raise EnrollmentError(f"enrolment URL must be wss://host[:port]/enroll, got {url!r}")


async def enroll(
    url: str,
    ca_file: Path,
    token: str,
    out_dir: Path,
    *,
    proxy: str | None = None,
    hostname: str | None = None,
    model: str | None = None,
    step_timeout: float = ENROLL_TIMEOUT,
    force: bool = False,
    now: datetime | None = None,
) -> DeviceIdentity:
    """Enrol this device at ``url`` (e.g. ``wss://relay.example:443/enroll``).

    ``ca_file`` is the pinned fleet CA; ``out_dir`` receives ``device.key``,
    ``device.pem`` and a copy of the CA as ``ca.pem``. ``proxy`` is an
    ``http://[user:pass@]host:port`` URL or None for a direct connection (the
    caller decides from config/env/PAC). ``hostname``/``model`` are
    informational. Raises :class:`EnrollmentError` (subclasses say why).
    """
    _check_url(url)
    files = IdentityFiles(Path(out_dir))
    prepared = await asyncio.to_thread(
        _prepare, files, Path(ca_file), token, hostname, model, force
    )
    answer = await _exchange(url, prepared, proxy, step_timeout)
    return await asyncio.to_thread(_finish, files, prepared, answer, now)


@dataclass(frozen=True, slots=True)
class _Prepared:
    key: ec.EllipticCurvePrivateKey
    ca_pem: bytes
    ca_cert: x509.Certificate
    tls: ssl.SSLContext
    request: str


def _prepare(
    files: IdentityFiles,
    ca_file: Path,
    token: str,
    hostname: str | None,
    model: str | None,
    force: bool,
) -> _Prepared:
    """Everything before the network: load the pinned CA, make and store the key, the CSR."""
    if files.is_enrolled() and not force:
        raise AlreadyEnrolledError(f"{files.directory} already holds a device certificate")
    try:
        ca_pem = ca_file.read_bytes()
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        tls = client_context(ca_file)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise EnrollmentError(f"cannot use CA file {ca_file}: {exc}", "bad_ca_file") from exc
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = generate_key()
    write_private_key(files.key_file, key)
    request = encode_request(build_csr(key), token=token, hostname=hostname, model=model)
    return _Prepared(key=key, ca_pem=ca_pem, ca_cert=ca_cert, tls=tls, request=request)


def _finish(
    files: IdentityFiles, prepared: _Prepared, answer: str | bytes, now: datetime | None
) -> DeviceIdentity:
    """Check the answer, then write the CA copy and the certificate."""
    try:
        issued = decode_response(answer)
    except Refused as refusal:
        raise EnrollmentError(f"enrolment refused: {refusal.message}", refusal.code) from None
    except MalformedResponse as exc:
        raise EnrollmentError(f"unusable answer from the relay: {exc}", "bad_response") from None
    if issued.ca_certificate_pem.strip() != prepared.ca_pem.strip():
        log.warning("! relay answered with a CA certificate other than the pinned one; ignored")
    try:
        identity = verify_device_certificate(
            issued.certificate_pem, prepared.key, prepared.ca_cert, now=now
        )
    except (CertificateMismatchError, IdentityError) as exc:
        raise EnrollmentError(
            f"the certificate received is unusable: {exc}", "bad_certificate"
        ) from None
    if identity.device_id != issued.device_id:
        raise EnrollmentError("the certificate names another device", "bad_certificate")
    write_file_atomic(files.ca_file, prepared.ca_pem)
    write_file_atomic(files.cert_file, issued.certificate_pem)
    log.info(
        "= enrolled as device %s (%s/%s), serial %s",
        identity.device_id,
        identity.customer,
        identity.site,
        identity.serial,
    )
    return identity


async def _exchange(
    url: str, prepared: _Prepared, proxy: str | None, step_timeout: float
) -> str | bytes:
    """Send the request over a verified connection and return the one answer."""
    try:
        async with connect(
            url,
            ssl=prepared.tls,
            proxy=proxy,
            subprotocols=[ENROLL_SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=step_timeout,
            max_size=MAX_RESPONSE_BYTES,
            ping_interval=None,
            compression=None,
        ) as ws:
            if ws.subprotocol != ENROLL_SUBPROTOCOL:
                raise EnrollmentError(
                    "the endpoint does not speak " + ENROLL_SUBPROTOCOL, "protocol_mismatch"
                )
            log.debug("> enrolment request to %s", url)
            await ws.send(prepared.request)
            async with asyncio.timeout(step_timeout):
                answer = await ws.recv()
            log.debug("< enrolment answer (%d bytes)", len(answer))
            return answer
    except ssl.SSLCertVerificationError as exc:
        log.error("! %s: relay certificate rejected: %s", url, exc.verify_message)
        raise RelayCertificateError(
            f"the relay's certificate was rejected ({exc.verify_message}); nothing was sent. "
            "A TLS-intercepting proxy, a wrong CA file or a wrong URL?"
        ) from exc
    except TimeoutError as exc:
        raise EnrollmentError(f"no answer from {url} within {step_timeout:g} s", "timeout") from exc
    except InvalidHandshake as exc:
        # websockets' handshake/proxy messages carry status lines, never proxy credentials.
        raise EnrollmentError(f"{url} refused the WebSocket handshake: {exc}", "handshake") from exc
    except OSError as exc:
        raise EnrollmentError(f"cannot reach {url}: {exc.strerror or exc}", "unreachable") from exc
    except WebSocketException as exc:
        raise EnrollmentError(
            f"{url} closed the connection ({type(exc).__name__})", "closed"
        ) from exc
