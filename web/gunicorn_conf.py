"""gunicorn settings for the portal, behind nginx (decision 0014) or alone.

Run: ``OUTLINK_PORTAL_CONFIG=portal.toml gunicorn -c web/gunicorn_conf.py 'web:create_app()'``
(``python -m web serve --config portal.toml`` does exactly that).

``front = "nginx"`` (the default): gunicorn serves plain HTTP on ``app_socket`` and
starts nginx (``web.frontproxy``) once it listens, stopping it on exit; nginx terminates
TLS on ``bind``, holds slow and idle clients, and passes the verified staff certificate
in a header. ``"system-nginx"``: the same without starting nginx (the system's runs).
``"gunicorn"``: gunicorn terminates TLS itself with the same hardened context as the
relay (``pki.tls.server_context``) trusting the staff CA for optional client
certificates; ``web.certauth.PeerCertMiddleware`` reads them from the socket.
"""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

from pki.ca import CA_CERT_FILE
from pki.tls import server_context
from web.config import CONFIG_ENV, load_config
from web.frontproxy import start_nginx, stop_nginx

_config_file = os.environ.get(CONFIG_ENV)
_config = load_config(Path(_config_file) if _config_file else None)
assert _config.tls_cert and _config.tls_key and _config.staff_ca_dir

_behind_nginx = _config.front != "gunicorn"
bind = [f"unix:{_config.app_socket}" if _behind_nginx else _config.bind]
#: The socket: owner and group (nginx's group in production), nobody else.
umask = 0o007
workers = _config.workers
worker_class = "gthread"
threads = _config.threads
if not _behind_nginx:
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
#: Only honour X-Forwarded-* from a proxy when the operator said one is in front (a unix
#: socket peer, nginx, is always trusted by gunicorn).
forwarded_allow_ips = "*" if _config.trust_proxy else "127.0.0.1"

_nginx: subprocess.Popen[bytes] | None = None


def when_ready(server: Any) -> None:
    """The app socket exists: start the nginx that fronts it (``front = "nginx"``)."""
    global _nginx
    if _config.front == "nginx":
        _nginx = start_nginx(_config)


def on_exit(server: Any) -> None:
    """nginx goes with gunicorn."""
    if _nginx is not None:
        stop_nginx(_nginx)


_context: ssl.SSLContext | None = None


def ssl_context(conf: Any, default_ssl_context_factory: Any) -> ssl.SSLContext:
    """One hardened context per worker (gunicorn asks for it per connection)."""
    global _context
    if _context is None:
        _context = server_context(conf.certfile, conf.keyfile, conf.ca_certs)
    return _context
