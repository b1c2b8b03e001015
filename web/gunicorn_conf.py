"""gunicorn settings for the portal: TLS with optional staff client certificates.

Run: ``OUTLINK_PORTAL_CONFIG=portal.toml gunicorn -c web/gunicorn_conf.py 'web:create_app()'``
(``python -m web serve --config portal.toml`` does exactly that).

TLS is terminated here with the same hardened context as the relay
(``pki.tls.server_context``: TLS 1.2+, ECDHE+AEAD, AES-256 first) but trusting
the *staff* CA for client certificates, requested optionally
(``CERT_OPTIONAL``): browsers without one still connect and use a password; a
presented certificate must chain to the staff CA or the handshake fails.
``web.certauth.PeerCertMiddleware`` then reads the verified certificate from
``environ["gunicorn.socket"]``.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

from pki.ca import CA_CERT_FILE
from pki.tls import server_context
from web.config import CONFIG_ENV, load_config

_config_file = os.environ.get(CONFIG_ENV)
_config = load_config(Path(_config_file) if _config_file else None)
assert _config.tls_cert and _config.tls_key and _config.staff_ca_dir

bind = [_config.bind]
workers = _config.workers
worker_class = "gthread"
threads = _config.threads
certfile = str(_config.tls_cert)
keyfile = str(_config.tls_key)
ca_certs = str(_config.staff_ca_dir / CA_CERT_FILE)
cert_reqs = ssl.CERT_OPTIONAL
#: Browsers keep connections open; a short keep-alive frees threads for others.
keepalive = 5
timeout = 60
graceful_timeout = 20
#: Request line and header limits well below gunicorn's defaults: our URLs are short.
limit_request_line = 4096
limit_request_fields = 60
accesslog = "-"
errorlog = "-"
loglevel = _config.log_level.lower()
proc_name = "outlink-portal"
#: Only honour X-Forwarded-* from a proxy when the operator said one is in front.
forwarded_allow_ips = "*" if _config.trust_proxy else "127.0.0.1"

_context: ssl.SSLContext | None = None


def ssl_context(conf: Any, default_ssl_context_factory: Any) -> ssl.SSLContext:
    """One hardened context per worker (gunicorn asks for it per connection)."""
    global _context
    if _context is None:
        _context = server_context(conf.certfile, conf.keyfile, conf.ca_certs)
    return _context
