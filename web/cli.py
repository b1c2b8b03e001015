"""Operator commands: ``python -m web <command> --config FILE`` or ``flask --app web outlink ...``.

``init`` is idempotent: it migrates the database, creates the staff CA and the
portal's TLS certificate if missing, and creates the first administrator only
if there is no active one (printing its password that one time). ``serve`` runs
gunicorn behind nginx (decision 0014); ``nginx-config`` prints the production site.
``audit verify`` walks the hash chain; ``audit prune`` applies the retention setting.
Every change made here is audited with actor ``cli:<os user>``.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask, current_app
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from release import VERSION
from store.db import make_engine, session_scope, upgrade
from store.portal import Role, User, append_audit, prune_chain, verify_chain
from web import passwords, sealing
from web.certauth import fingerprint
from web.config import CONFIG_ENV, PortalConfig, load_config, secret_key
from web.staff_ca import ensure_server_cert, ensure_staff_ca, issue_staff_cert, write_pkcs12

FIRST_ADMIN = "admin"
GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@contextmanager
def _session(config: PortalConfig) -> Iterator[Session]:
    """One committed unit of work on a short-lived engine (disposed afterwards)."""
    engine = make_engine(config.database_url)
    try:
        with session_scope(engine) as session:
            yield session
    finally:
        engine.dispose()


def create_admin(
    session: Session, username: str = FIRST_ADMIN, *, only_if_none: bool = False
) -> str | None:
    """Create an administrator with global scope; return its generated password.

    With ``only_if_none``, do nothing (return None) if an active administrator exists.
    """
    admin_role = session.execute(select(Role).where(Role.name == "administrator")).scalar_one()
    if only_if_none:
        active = session.scalar(
            select(func.count(User.id)).where(
                User.role_id == admin_role.id, User.is_active.is_(True)
            )
        )
        if active:
            return None
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise click.ClickException(f"user {username!r} exists already")
    now = datetime.now(UTC)
    password = passwords.generate_password()
    session.add(
        User(
            username=username,
            display_name="Administrator",
            password_hash=passwords.hash_password(password),
            role_id=admin_role.id,
            all_scope=True,
            is_active=True,
            # The generated password has been printed: it is replaced at first sign-in.
            must_change_password=True,
            created_at=now,
            created_by=_actor(),
            password_changed_at=now,
        )
    )
    append_audit(
        session,
        "admin.user_created",
        actor=_actor(),
        summary=f"created administrator {username} from the command line",
        details={"user": username, "role": "administrator", "all_scope": True},
    )
    return password


def init_portal(config: PortalConfig, out: Any = None) -> dict[str, Any]:
    """Everything ``init`` does; returns what was created (idempotent)."""
    out = out or click.echo
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    upgrade(config.database_url)
    with _session(config) as session:  # the data step of migration 0008: needs the key
        sealed = sealing.seal_plaintext_rows(session, sealing.totp_box(secret_key(config.data_dir)))
    assert config.staff_ca_dir and config.tls_cert and config.tls_key
    ca, ca_created = ensure_staff_ca(config.staff_ca_dir)
    cert_created = ensure_server_cert(ca, config.tls_cert, config.tls_key, config.tls_names)
    with _session(config) as session:
        password = create_admin(session, only_if_none=True)
        initial_pending = bool(
            session.scalar(select(User.must_change_password).where(User.username == FIRST_ADMIN))
        )
    if ca_created:
        out(f"staff CA created: {config.staff_ca_dir}")
    if cert_created:
        out(f"portal TLS certificate issued: {config.tls_cert}")
    if sealed:
        out(f"second-factor secrets sealed: {sealed}")
    if password is not None:
        out(f"first administrator created -- username: {FIRST_ADMIN}  password: {password}")
        out("(the password is shown only now, and must be changed at the first sign-in)")
    return {
        "staff_ca": ca_created,
        "server_cert": cert_created,
        "admin_password": password,
        # True until the first administrator has replaced the generated password.
        "admin_initial_pending": initial_pending,
    }


def _config(path: str | None) -> PortalConfig:
    """The app's config inside ``flask``; else the file given (or ``$OUTLINK_PORTAL_CONFIG``)."""
    if path is None:
        try:
            config: PortalConfig = current_app.config["OUTLINK"]
            return config
        except RuntimeError:
            path = os.environ.get(CONFIG_ENV)
    return load_config(Path(path) if path else None)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="portal TOML file (default: $OUTLINK_PORTAL_CONFIG)",
)


@click.group("outlink")
@click.version_option(VERSION, message="%(prog)s %(version)s")
def outlink() -> None:
    """Outlink portal administration."""


@outlink.command("init")
@config_option
def init_command(config_path: str | None) -> None:
    """Migrate the DB, create the staff CA, TLS cert and first admin (only what is missing)."""
    init_portal(_config(config_path))


@outlink.command("create-admin")
@config_option
@click.option("--username", default=FIRST_ADMIN, show_default=True)
def create_admin_command(config_path: str | None, username: str) -> None:
    """Create an administrator and print its generated password once."""
    config = _config(config_path)
    with _session(config) as session:
        password = create_admin(session, username.strip().lower())
    click.echo(f"administrator created -- username: {username}  password: {password}")


@outlink.command("serve")
@config_option
def serve_command(config_path: str | None) -> None:
    """Run the portal under gunicorn, behind nginx unless front is "gunicorn" (exec)."""
    config = _config(config_path)
    if not (config.tls_cert and config.tls_cert.exists()):
        raise click.ClickException("no TLS certificate: run `python -m web init` first")
    if config_path:
        os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "web:create_app()"]
    os.execvp(gunicorn[0], gunicorn)  # noqa: S606  (fixed argv, no shell)


@outlink.command("nginx-config")
@config_option
def nginx_config_command(config_path: str | None) -> None:
    """Print the nginx site that fronts this portal (for front = "system-nginx")."""
    from web.frontproxy import server_conf

    click.echo(server_conf(_config(config_path)), nl=False)


@outlink.command("issue-staff-cert")
@config_option
@click.argument("username")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
def issue_staff_cert_command(config_path: str | None, username: str, out_dir: str) -> None:
    """Issue a staff client certificate for USERNAME and pin it on the account."""
    config = _config(config_path)
    assert config.staff_ca_dir
    ca, _ = ensure_staff_ca(config.staff_ca_dir)
    username = username.strip().lower()
    issued = issue_staff_cert(ca, username)
    target = Path(out_dir)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _session(config) as session:
        user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
        if user is None:
            raise click.ClickException(f"no user {username!r}")
        user.cert_fingerprint = fingerprint(issued.cert.public_bytes(Encoding.DER))
        append_audit(
            session,
            "admin.staff_cert_issued",
            actor=_actor(),
            user_id=user.id,
            summary=f"issued a staff client certificate to {username}",
            details={"user": username, "fingerprint": user.cert_fingerprint},
        )
    issued.write(target / f"{username}.pem", target / f"{username}.key")
    bundle_password = passwords.generate_password()
    write_pkcs12(target / f"{username}.p12", issued, ca, username, bundle_password)
    click.echo(f"certificate: {target / (username + '.pem')}  key: {target / (username + '.key')}")
    click.echo(
        f"browser bundle: {target / (username + '.p12')}  import password: {bundle_password}"
    )


@outlink.group("audit")
def audit_group() -> None:
    """The audit trail's integrity and retention."""


@audit_group.command("verify")
@config_option
def audit_verify(config_path: str | None) -> None:
    """Walk the hash chain; exit 1 and name the first broken row if it was tampered with."""
    config = _config(config_path)
    with _session(config) as session:
        report = verify_chain(session)
    if report.ok:
        click.echo(f"audit chain OK: {report.checked} events; head {report.head_hash}")
        return
    click.echo(
        f"audit chain BROKEN at event {report.first_bad_id}: {report.problem} "
        f"({report.checked} events verified before it)",
        err=True,
    )
    sys.exit(1)


@audit_group.command("prune")
@config_option
@click.option("--days", type=int, default=None, help="keep this many days (default: setting)")
def audit_prune(config_path: str | None, days: int | None) -> None:
    """Remove events older than the retention period, leaving an anchor that keeps it verifiable."""
    config = _config(config_path)
    keep = days if days is not None else config.audit_retention_days
    if keep <= 0:
        click.echo("retention disabled (audit_retention_days <= 0): nothing pruned")
        return
    with _session(config) as session:
        count = prune_chain(session, datetime.now(UTC) - timedelta(days=keep), actor=_actor())
    click.echo(f"pruned {count} events older than {keep} days")


def init_app(app: Flask) -> None:
    app.cli.add_command(outlink)
