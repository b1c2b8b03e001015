"""TLS contexts for every Outlink connection: the relay's server side and its clients.

Both sides trust the fleet CA only (never the system store), require TLS 1.2+,
and offer only ECDHE with AEAD ciphers, AES-256-GCM first (R21). TLS 1.3
suites are OpenSSL's defaults, which already put TLS_AES_256_GCM_SHA384 first.
"""

from __future__ import annotations

import ssl
from os import PathLike

#: TLS 1.2 suites: forward secrecy + AEAD only; 256-bit AES preferred, then ChaCha20, then AES-128.
TLS12_CIPHERS = "ECDHE+AESGCM+AES256:ECDHE+CHACHA20:ECDHE+AESGCM"

StrPath = str | PathLike[str]


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # Strict RFC 5280 checks (Python 3.13's default); our CA issues conforming certificates.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def server_context(cert: StrPath, key: StrPath, ca: StrPath) -> ssl.SSLContext:
    """The relay's context: one port for agents, services and enrolment.

    Client certificates are OPTIONAL (``/enroll`` has none yet) but, when
    presented, must chain to the fleet CA; each path handler then demands the
    identity it needs.
    """
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(
    ca: StrPath, cert: StrPath | None = None, key: StrPath | None = None
) -> ssl.SSLContext:
    """An agent's or service's context: the pinned fleet CA only, hostname checked.

    Pass ``cert``/``key`` to present a client certificate (agents, the portal);
    enrolment connects without one.
    """
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # CERT_REQUIRED + check_hostname
    ctx.load_verify_locations(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx
