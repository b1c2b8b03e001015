"""The real portal served over TLS on 127.0.0.1, for browser and TLS tests.

``python -m web init`` prepares a data folder (staff CA, server cert, first admin),
a small fleet is seeded, and ``python -m web serve`` runs gunicorn behind the nginx it
starts (``front = "nginx"``, decision 0014; pass ``front="gunicorn"`` for gunicorn
alone). Startup is awaited by polling ``/healthz`` over TLS (verified against the staff
CA) until a deadline, and the process group (nginx included) is terminated afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from pki.fleet import ensure_site
from store.db import make_engine, session_scope
from store.models import Device, Presence
from store.portal import Role, User, UserScope
from tests.conftest import UNIT
from web.passwords import hash_password

REPO = Path(__file__).parents[2]
ENGINEER_PASSWORD = "engineer passphrase 1"
#: What the first administrator chose at the first sign-in (``init`` forces a change).
ADMIN_PASSWORD = "administrator passphrase 1"


@dataclass(frozen=True)
class ServedPortal:
    base_url: str
    #: The first administrator's password, as if already changed from the generated one.
    admin_password: str
    config: Path
    data_dir: Path
    staff_ca: Path
    database_url: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def seed_fleet(database_url: str, customers: int = 3, devices_per_site: int = 4) -> None:
    """Customers with two sites each; every other device online. Engineer ``eng`` on the first;
    the first administrator's generated password already changed to ``ADMIN_PASSWORD``."""
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    names = ["Acme Hospital", "Globex Imaging", "Initech Clinics", "Umbrella Health"]
    try:
        with session_scope(engine) as session:
            first_customer = None
            for c in range(customers):
                for s, site_name in enumerate(("North Campus", "South Clinic")):
                    site = ensure_site(
                        session,
                        names[c].split()[0].lower(),
                        f"site-{s}",
                        customer_name=names[c],
                        site_name=site_name,
                    )
                    first_customer = first_customer or site.customer_id
                    for d in range(devices_per_site):
                        device_id = f"{c:08x}-{s:04x}-4{d:03x}-8000-{c * 100 + s * 10 + d:012x}"
                        session.add(
                            Device(
                                id=device_id,
                                customer_id=site.customer_id,
                                site_id=site.id,
                                enrolled_at=now - timedelta(days=d + 1),
                                hostname=f"{names[c].split()[0].lower()}-ct-{s}{d}",
                                model=("CT Scanner 9000", "MR Unit 3T")[d % 2],
                            )
                        )
                        session.flush()
                        session.add(
                            Presence(
                                device_id=device_id,
                                relay_id="relay-1",
                                online=d % 2 == 0,
                                connected_at=now,
                                last_seen=now - timedelta(seconds=20 * d),
                                agent_version="1.0.0",
                            )
                        )
            admin = session.execute(select(User).where(User.username == "admin")).scalar_one()
            admin.password_hash = hash_password(ADMIN_PASSWORD)
            admin.must_change_password = False
            role_id = session.execute(
                Role.__table__.select().where(Role.name == "service_engineer")
            ).first()
            assert role_id is not None
            session.add(
                User(
                    username="eng",
                    display_name="Erin Engineer",
                    password_hash=hash_password(ENGINEER_PASSWORD),
                    role_id=role_id.id,
                    all_scope=False,
                    is_active=True,
                    must_change_password=False,
                    created_at=now,
                    password_changed_at=now,
                    scopes=[UserScope(customer_id=first_customer)],
                )
            )
    finally:
        engine.dispose()


@contextmanager
def serve_portal(tmp: Path, **settings: object) -> Iterator[ServedPortal]:
    """Init, seed and serve a portal in ``tmp``; stop it on exit."""
    port = _free_port()
    database_url = f"sqlite:///{tmp / 'outlink.db'}"
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in settings.items())
    config = tmp / "portal.toml"
    config.write_text(
        f'[portal]\ndata_dir = "data"\ndatabase_url = "{database_url}"\n'
        f'bind = "127.0.0.1:{port}"\nworkers = 1\nthreads = 4\nlog_level = "WARNING"\n{extra}'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    init = subprocess.run(
        [sys.executable, "-m", "web", "init", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=True,
    )
    assert re.search(r"password: (\S+)", init.stdout), init.stdout + init.stderr
    seed_fleet(database_url)
    log = (tmp / "gunicorn.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "web", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    staff_ca = tmp / "data" / "staff-ca" / "ca.pem"
    base_url = f"https://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, staff_ca, proc, deadline=time.monotonic() + 20 * UNIT)
        yield ServedPortal(base_url, ADMIN_PASSWORD, config, tmp / "data", staff_ca, database_url)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test may have killed it all
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10 * UNIT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_healthy(base_url: str, ca: Path, proc: subprocess.Popen[bytes], deadline: float) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(
                base_url + "/healthz", context=context, timeout=UNIT
            ) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1 * UNIT)  # polling a starting server: there is no event to wait on
