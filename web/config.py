"""Portal settings: a TOML file, then ``OUTLINK_PORTAL_*`` variables, over safe defaults.

Every setting lives in the ``[portal]`` table of the file under the field name
below, read by `tomlconfig` (types checked, unknown keys refused); ``OUTLINK_PORTAL_<FIELD>``
(upper case) overrides it. Relative paths are taken from the file's directory. Secrets
never live in the file or the repository: the Flask secret key is generated into the
data directory on first run (mode 0600) and read from there afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pki.keys import PRIVATE_FILE_MODE
from tomlconfig import ConfigError, ConfigFile, Relative

ENV_PREFIX = "OUTLINK_PORTAL_"
#: Where ``create_app()`` (gunicorn's entry point) finds the config file.
CONFIG_ENV = "OUTLINK_PORTAL_CONFIG"
SECRET_KEY_FILE = "secret_key"  # noqa: S105  (a file name, not a secret)
#: 64 random bytes: well beyond what HMAC-SHA512 (itsdangerous) can use.
SECRET_KEY_BYTES = 64


@dataclass(slots=True)
class PortalConfig:
    """All portal settings with their defaults (development on one machine)."""

    data_dir: Relative[Path] = Path("var/portal")
    database_url: str = "sqlite:///var/outlink.db"
    #: Where browsers connect (TLS): nginx listens here, or gunicorn with ``front = "gunicorn"``.
    bind: str = "127.0.0.1:8444"
    #: Who terminates TLS in front of the app (decision 0014): ``"nginx"`` -- ``serve``
    #: starts nginx on ``bind`` and gunicorn on ``app_socket``; ``"system-nginx"`` -- the
    #: same, but the system's nginx (``deploy/nginx/outlink-portal.conf``) runs the proxy;
    #: ``"gunicorn"`` -- gunicorn alone (the pre-0014 setup: slow clients can stall it).
    front: str = "nginx"
    #: The unix socket gunicorn serves nginx on (only nginx may connect: it is the one
    #: that vouches for client certificates); default ``<data_dir>/portal.sock``.
    app_socket: Relative[Path | None] = None
    #: The portal's TLS server cert/key; made from the staff CA by ``init`` when missing.
    tls_cert: Relative[Path | None] = None
    tls_key: Relative[Path | None] = None
    #: Names the generated server cert is valid for.
    tls_names: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1"])
    #: The staff CA (client certificates for staff login; signs the portal's server cert).
    staff_ca_dir: Relative[Path | None] = None
    #: The portal's service identity towards relays (``/service``), from the fleet CA.
    relay_ca: Relative[Path | None] = None
    relay_cert: Relative[Path | None] = None
    relay_key: Relative[Path | None] = None
    #: Used when no relay has registered its service URL in the database yet.
    relay_url: str = ""
    #: Seconds an RPC to a relay may take before the portal gives up (the DB is the truth).
    relay_timeout: float = 3.0
    #: The relays' ``/view`` endpoint (desktop viewer) as browsers reach it. ``{host}`` is
    #: replaced by the host of the device's relay (from its ``service_url``); the port is
    #: the relays' ``[viewer] port``.
    relay_view_url: str = "wss://{host}:8445/view"
    #: Where relays store uploaded log files (their telemetry ``upload_dir``, shared with
    #: the portal); unset: uploads are listed but cannot be downloaded from this portal.
    upload_dir: Relative[Path | None] = None
    #: Who asks, as a device's consent prompt names the requester's organisation.
    organisation: str = "Remote service"
    session_idle_minutes: int = 30
    session_absolute_hours: int = 12
    #: Failed sign-ins from one address for one account name before delays begin; each
    #: further failure doubles the delay, from ``login_delay_seconds`` up to
    #: ``lockout_minutes`` (see `web.throttle`).
    login_max_failures: int = 5
    #: Failed sign-ins from one address (any names) before that address is delayed.
    login_max_failures_per_addr: int = 20
    #: Failed sign-ins for one name from addresses it has not signed in from, before
    #: such addresses are delayed for it (its usual addresses are not).
    login_max_failures_per_account: int = 10
    login_delay_seconds: int = 30
    #: The longest delay; failures are forgotten this long after the last one.
    lockout_minutes: int = 15
    #: A successful sign-in makes its address usual for the account for this many days.
    login_usual_address_days: int = 90
    #: Presence rows not refreshed for this long are shown offline (a crashed relay's rows).
    presence_stale_seconds: int = 180
    audit_retention_days: int = 365
    page_size: int = 50
    workers: int = 2
    threads: int = 4
    log_level: str = "INFO"
    #: Client address source: False = the socket peer; True = the right-most address in
    #: X-Forwarded-For that is not in ``trusted_proxies`` (behind a reverse proxy).
    #: Always on behind nginx (``front`` other than ``"gunicorn"``), which sets the header.
    trust_proxy: bool = False
    #: Addresses or networks of the reverse proxies in front of the portal.
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1/8", "::1/128"])


#: The values of ``front``.
FRONTS = ("nginx", "system-nginx", "gunicorn")


def _check(config: PortalConfig) -> None:
    if config.front not in FRONTS:
        raise ConfigError(f"portal.front: expected one of {FRONTS}, got {config.front!r}")
    for net in config.trusted_proxies:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"portal.trusted_proxies: {net!r} is not an address or network"
            ) from None


PORTAL_FILE = ConfigFile(PortalConfig, ENV_PREFIX, check=_check, table="portal")


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PortalConfig:
    """Defaults <- ``[portal]`` of ``path`` <- ``OUTLINK_PORTAL_*`` <- ``overrides``.

    Raises `tomlconfig.ConfigError`. Files left unset are placed in ``data_dir``.
    """
    config = PORTAL_FILE.load(path, environ, overrides)
    return dataclasses.replace(
        config,
        app_socket=config.app_socket or config.data_dir / "portal.sock",
        trust_proxy=config.trust_proxy or config.front != "gunicorn",
        staff_ca_dir=config.staff_ca_dir or config.data_dir / "staff-ca",
        tls_cert=config.tls_cert or config.data_dir / "portal.pem",
        tls_key=config.tls_key or config.data_dir / "portal.key",
    )


def secret_key(data_dir: Path) -> str:
    """The Flask secret key from ``data_dir``, generated (0600) on first use.

    Written to a temp file and hard-linked into place, so concurrent workers starting
    together all end up reading the one key that won, never a half-written file.
    """
    path = Path(data_dir) / SECRET_KEY_FILE
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(SECRET_KEY_BYTES))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_text().strip()
