"""nginx in front of the portal: TLS, slow and idle clients, and the staff certificate.

Why (decision 0014): gunicorn's threads each hold one connection through its TLS
handshake and headers, so a few silent or trickling sockets took every thread. nginx's
event loop holds thousands of them for a few kilobytes each and drops them after
``CLIENT_TIMEOUT_S``; gunicorn only ever sees whole requests, from nginx, on a unix
socket that only nginx may open.

The staff client certificate: nginx verifies it against the staff CA
(``ssl_verify_client optional``) and passes it, URL-encoded PEM, in
``CLIENT_CERT_HEADER`` only when verification succeeded. It sets that header on every
request (empty: not sent), so a client's own header of that name never reaches the app.

`server_conf` is the http-level part (what ``/etc/nginx/sites-available`` holds in
production, ``deploy/nginx/outlink-portal.conf``); `managed_conf` wraps it into a whole
nginx.conf that ``python -m web serve`` runs next to gunicorn (``front = "nginx"``).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from pki.ca import CA_CERT_FILE
from pki.tls import TLS12_CIPHERS
from web import MAX_CONTENT_LENGTH
from web.config import PortalConfig

#: The request header carrying the verified client certificate (set by nginx only).
CLIENT_CERT_HEADER = "X-Outlink-Client-Cert"
#: TLS handshake plus request headers must arrive within this; then nginx closes (408).
CLIENT_TIMEOUT_S = 10
#: Requests in progress per client address (nginx's ``limit_conn``); a browser opens ~6.
CONNECTIONS_PER_ADDRESS = 32
#: Sockets one nginx worker holds: idle attackers and real browsers alike.
WORKER_CONNECTIONS = 8192
#: Seconds to wait for nginx to stop before killing it.
STOP_GRACE_S = 5.0
NGINX = "nginx"
#: prctl(2): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def server_conf(config: PortalConfig) -> str:
    """The http-context part of the nginx config for ``config`` (map, zone, upstream, server)."""
    assert config.tls_cert and config.tls_key and config.staff_ca_dir and config.app_socket
    return f"""# Outlink portal behind nginx (decision 0014). Generated from the portal's config by
# web/frontproxy.py: TLS, staff client certificates and slow-client limits live here;
# gunicorn serves plain HTTP on a unix socket only nginx can open.
# Production (front = "system-nginx"), as root:
#   outlink-portal nginx-config --config /etc/outlink/portal.toml
#     > /etc/nginx/sites-available/outlink-portal
#   ln -s ../sites-available/outlink-portal /etc/nginx/sites-enabled/
#   usermod -aG outlink-portal www-data   (nginx may then open the app socket)
#   systemctl reload nginx

# The verified staff certificate, or nothing: a client cannot set this header itself.
map $ssl_client_verify $outlink_client_cert {{
    SUCCESS $ssl_client_escaped_cert;
    default "";
}}

limit_conn_zone $binary_remote_addr zone=outlink_portal_addr:10m;

upstream outlink_portal {{
    server unix:{config.app_socket};
    keepalive 16;
}}

server {{
    listen {config.bind} ssl;
    server_name _;
    server_tokens off;

    ssl_certificate {config.tls_cert};
    ssl_certificate_key {config.tls_key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {TLS12_CIPHERS};
    ssl_prefer_server_ciphers on;
    ssl_session_tickets off;
    ssl_client_certificate {config.staff_ca_dir / CA_CERT_FILE};
    ssl_verify_client optional;
    ssl_verify_depth 1;

    # Slow and idle clients: handshake and headers within the timeout, then closed.
    client_header_timeout {CLIENT_TIMEOUT_S}s;
    client_body_timeout {CLIENT_TIMEOUT_S}s;
    send_timeout {CLIENT_TIMEOUT_S}s;
    keepalive_timeout 5s;
    reset_timedout_connection on;
    large_client_header_buffers 4 8k;
    client_max_body_size {MAX_CONTENT_LENGTH};
    limit_conn outlink_portal_addr {CONNECTIONS_PER_ADDRESS};
    limit_conn_status 429;

    location / {{
        proxy_pass http://outlink_portal;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        # One entry, the peer nginx saw: nothing the client wrote survives.
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header {CLIENT_CERT_HEADER} $outlink_client_cert;
        proxy_read_timeout 60s;
    }}
}}
"""


def managed_conf(config: PortalConfig, run_dir: Path) -> str:
    """A whole nginx.conf around `server_conf`, keeping its files in ``run_dir``."""
    # As root, nginx would hand its workers to "nobody", who cannot read our keys.
    user = f"user {pwd.getpwuid(0).pw_name};\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
worker_rlimit_nofile {2 * WORKER_CONNECTIONS};
daemon off;
pid {run_dir / "nginx.pid"};
error_log stderr warn;

events {{
    worker_connections {WORKER_CONNECTIONS};
}}

http {{
    access_log off;
    client_body_temp_path {run_dir / "client_body"};
    proxy_temp_path {run_dir / "proxy"};
    fastcgi_temp_path {run_dir / "fastcgi"};
    uwsgi_temp_path {run_dir / "uwsgi"};
    scgi_temp_path {run_dir / "scgi"};

{server_conf(config)}}}
"""


def start_nginx(config: PortalConfig) -> subprocess.Popen[bytes]:
    """Write the managed config into ``<data_dir>/nginx`` and start nginx on it (no fork)."""
    nginx = shutil.which(NGINX, path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if nginx is None:
        raise RuntimeError('nginx not found: install the Debian package "nginx"')
    run_dir = Path(config.data_dir).resolve() / "nginx"
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = run_dir / "nginx.conf"
    conf.write_text(managed_conf(config, run_dir))
    return subprocess.Popen(
        [nginx, "-p", str(run_dir), "-e", "stderr", "-c", str(conf)],
        preexec_fn=_die_with_parent,  # safe: gunicorn's arbiter runs no threads
    )


def _die_with_parent() -> None:
    """In the child: SIGTERM when gunicorn's arbiter dies, even by SIGKILL, so no nginx is
    left holding the port (it runs in the foreground: ``daemon off``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_nginx(proc: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGTERM), SIGKILL after `STOP_GRACE_S`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
