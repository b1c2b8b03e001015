"""Browser-facing hardening: CSRF on every state-changing request and the security headers.

CSP allows our own origin only -- no inline script, no inline style, no CDN --
so even markup that slipped through escaping could not run. ``frame-ancestors
'none'`` stops click-jacking; HSTS pins HTTPS; ``nosniff`` stops a JSON answer
being run as script.
"""

from __future__ import annotations

from flask import Flask, Response
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
#: One year, the HSTS preload minimum.
HSTS = "max-age=31536000; includeSubDomains"

HEADERS = {
    "Content-Security-Policy": CSP,
    "Strict-Transport-Security": HSTS,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if response.mimetype == "text/html" or response.mimetype == "application/json":
        # Pages show customer data: never keep them in shared or browser caches.
        response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Cookie flags, CSRF protection and headers for ``app``."""
    app.config.update(
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        WTF_CSRF_TIME_LIMIT=None,  # bound to the server-side session, which has its own expiry
        WTF_CSRF_SSL_STRICT=True,  # HTTPS posts must carry a same-origin Referer
    )
    csrf.init_app(app)
    app.after_request(_headers)
