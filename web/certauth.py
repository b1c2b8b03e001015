"""Staff login with a client certificate: read the TLS peer certificate below Flask.

gunicorn terminates TLS with ``cert_reqs = CERT_OPTIONAL`` against the staff CA
(see ``web/gunicorn_conf.py``): a browser may present a certificate, and if it
does, the handshake only succeeds when it chains to the staff CA. gunicorn puts
the connection's socket in ``environ["gunicorn.socket"]``; this middleware
copies the *verified* certificate (DER) into ``environ[PEER_CERT_KEY]``, where
the login view finds it. Nothing a client sends (headers, form fields) can set it.

Mapping a certificate to a user: the user's row pins the SHA-256 fingerprint
of the one certificate issued to them (``python -m web issue-staff-cert``), and
the certificate's SAN URI must name the same user (``urn:outlink:staff:<name>``).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509

PEER_CERT_KEY = "outlink.peer_cert_der"
STAFF_URN = "urn:outlink:staff:"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class PeerCertMiddleware:
    """WSGI wrapper: expose the verified client certificate of gunicorn's TLS socket."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ.pop(PEER_CERT_KEY, None)
        sock = environ.get("gunicorn.socket")
        # getpeercert() is {} unless the chain was verified (CERT_OPTIONAL + staff CA).
        if isinstance(sock, ssl.SSLSocket) and sock.getpeercert():
            environ[PEER_CERT_KEY] = sock.getpeercert(binary_form=True)
        return self.app(environ, start_response)


def fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate's DER, lowercase hex (what ``users.cert_fingerprint`` holds)."""
    return hashlib.sha256(der).hexdigest()


def staff_username(der: bytes) -> str | None:
    """The username a staff certificate names in its SAN URI, or None."""
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    names = [
        u[len(STAFF_URN) :]
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(STAFF_URN)
    ]
    return names[0] if len(names) == 1 else None
