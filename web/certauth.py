"""Staff login with a client certificate: take the verified certificate below Flask.

Behind nginx (``front`` ``"nginx"``/``"system-nginx"``, decision 0014), nginx verifies
an optional client certificate against the staff CA and passes it in
``web.frontproxy.CLIENT_CERT_HEADER`` only when verification succeeded, overwriting
whatever a client sent under that name; gunicorn listens on a unix socket only nginx may
open, so that header is trusted here and only here. With ``front = "gunicorn"`` gunicorn
terminates TLS itself (``cert_reqs = CERT_OPTIONAL`` against the staff CA) and the
certificate is read from ``environ["gunicorn.socket"]``; the header is then ignored.
Either way this middleware puts the *verified* certificate (DER) into
``environ[PEER_CERT_KEY]``, where the login view finds it, and nothing else does.

Mapping a certificate to a user: the user's row pins the SHA-256 fingerprint
of the one certificate issued to them (``python -m web issue-staff-cert``), and
the certificate's SAN URI must name the same user (``urn:outlink:staff:<name>``).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from cryptography import x509

PEER_CERT_KEY = "outlink.peer_cert_der"
STAFF_URN = "urn:outlink:staff:"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


#: WSGI key of ``web.frontproxy.CLIENT_CERT_HEADER``.
PROXY_CERT_ENVIRON = "HTTP_X_OUTLINK_CLIENT_CERT"


class PeerCertMiddleware:
    """WSGI wrapper: expose the verified client certificate (from nginx or gunicorn's TLS)."""

    def __init__(self, app: WSGIApp, *, from_proxy: bool) -> None:
        self.app = app
        self.from_proxy = from_proxy

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ.pop(PEER_CERT_KEY, None)
        forwarded = environ.pop(PROXY_CERT_ENVIRON, "")
        if self.from_proxy:
            if forwarded:
                der = _pem_to_der(unquote(forwarded))
                if der is not None:
                    environ[PEER_CERT_KEY] = der
        else:
            sock = environ.get("gunicorn.socket")
            # getpeercert() is {} unless the chain was verified (CERT_OPTIONAL + staff CA).
            if isinstance(sock, ssl.SSLSocket) and sock.getpeercert():
                environ[PEER_CERT_KEY] = sock.getpeercert(binary_form=True)
        return self.app(environ, start_response)


def _pem_to_der(pem: str) -> bytes | None:
    try:
        return ssl.PEM_cert_to_DER_cert(pem)
    except ValueError:
        return None


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
