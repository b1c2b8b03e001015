"""The portal behind nginx and gunicorn over real TLS: hardening, staff certificate login."""

from __future__ import annotations

import re
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
import requests

from pki.ca import create_ca
from pki.issue import issue_service_cert
from tests.conftest import UNIT
from tests.web.served import REPO, ServedPortal, serve_portal
from web.config import load_config
from web.frontproxy import CLIENT_CERT_HEADER

CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedPortal]:
    with serve_portal(tmp_path_factory.mktemp("served")) as served:
        yield served


def _issue(portal: ServedPortal, username: str, out: Path) -> tuple[str, str]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "web",
            "issue-staff-cert",
            username,
            "--config",
            str(portal.config),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    return str(out / f"{username}.pem"), str(out / f"{username}.key")


def _session(portal: ServedPortal, cert: tuple[str, str] | None = None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override our pinned staff CA
    session.verify = str(portal.staff_ca)
    session.cert = cert
    session.headers["Referer"] = portal.base_url + "/"
    return session


def test_tls_is_hardened(portal: ServedPortal) -> None:
    """TLS 1.2 with a 256-bit AEAD suite when offered; the server cert chains to the staff CA."""
    host, port = portal.base_url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(portal.staff_ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((host, int(port))) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        name, version, bits = tls.cipher()
        assert (version == "TLSv1.2" and bits == 256 and "GCM" in name) or "CHACHA" in name
    response = _session(portal).get(portal.base_url + "/login")
    assert response.status_code == 200
    assert "max-age=31536000" in response.headers["Strict-Transport-Security"]


def test_staff_certificate_login(portal: ServedPortal, tmp_path: Path) -> None:
    cert = _issue(portal, "eng", tmp_path / "certs")
    session = _session(portal, cert)
    page = session.get(portal.base_url + "/login").text
    assert "Sign in with my staff certificate" in page
    token = CSRF_RE.search(page)
    assert token
    response = session.post(
        portal.base_url + "/login/certificate",
        data={"csrf_token": token.group(1)},
        allow_redirects=False,
    )
    assert response.status_code == 302 and response.headers["Location"] == "/"
    devices = session.get(portal.base_url + "/devices").text
    assert "acme-ct-00" in devices and "globex" not in devices
    # A browser without a certificate still gets the password form, without the button.
    plain = _session(portal).get(portal.base_url + "/login").text
    assert "Sign in with my staff certificate" not in plain and 'name="password"' in plain


def test_certificate_not_pinned_or_from_another_ca_is_refused(
    portal: ServedPortal, tmp_path: Path
) -> None:
    stale = _issue(portal, "eng", tmp_path / "old")
    _issue(portal, "eng", tmp_path / "new")  # re-issuing replaces the pin
    session = _session(portal, stale)
    token = CSRF_RE.search(session.get(portal.base_url + "/login").text)
    assert token
    response = session.post(
        portal.base_url + "/login/certificate", data={"csrf_token": token.group(1)}
    )
    assert "not linked to an active account" in response.text
    foreign = issue_service_cert(create_ca(common_name="Evil CA"), "eng")
    foreign.write(tmp_path / "evil.pem", tmp_path / "evil.key")
    # nginx completes the handshake but answers nothing but 400 on such a connection.
    evil = _session(portal, (str(tmp_path / "evil.pem"), str(tmp_path / "evil.key")))
    response = evil.get(portal.base_url + "/login")
    assert response.status_code == 400 and "csrf_token" not in response.text


def test_forged_certificate_header_is_ignored(portal: ServedPortal, tmp_path: Path) -> None:
    """Only nginx vouches for a certificate: a client's own header of that name is dropped."""
    cert_file, _ = _issue(portal, "eng", tmp_path / "certs")
    forged = quote(Path(cert_file).read_text())
    session = _session(portal)
    session.headers[CLIENT_CERT_HEADER] = forged
    page = session.get(portal.base_url + "/login").text
    assert "Sign in with my staff certificate" not in page
    token = CSRF_RE.search(page)
    assert token
    response = session.post(
        portal.base_url + "/login/certificate",
        data={"csrf_token": token.group(1)},
    )
    assert "did not present a staff certificate" in response.text
    assert "acme-ct-00" not in session.get(portal.base_url + "/devices").text


def test_app_socket_is_the_proxys_alone(portal: ServedPortal) -> None:
    """gunicorn listens on no TCP port, and its socket is closed to other users."""
    config = load_config(portal.config)
    assert config.app_socket is not None
    assert stat.S_IMODE(config.app_socket.stat().st_mode) & 0o007 == 0
    assert stat.S_IMODE(config.app_socket.parent.stat().st_mode) & 0o007 == 0


def test_nginx_does_not_outlive_gunicorn(tmp_path: Path) -> None:
    """A killed portal (SIGKILL: no on_exit hook) takes its nginx along, freeing the port."""
    with serve_portal(tmp_path) as portal:
        nginx = psutil.Process(int((portal.data_dir / "nginx" / "nginx.pid").read_text()))
        arbiter = nginx.parent()
        assert arbiter is not None and "gunicorn" in " ".join(arbiter.cmdline())
        arbiter.kill()
        nginx.wait(timeout=10 * UNIT)
