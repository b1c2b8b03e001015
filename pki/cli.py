"""``outlink-pki``: the operator's tool for the fleet CA, certificates and enrolment tokens.

Every command is safe to repeat where that makes sense: ``init`` keeps an
existing CA, ``server-cert``/``service-cert`` keep a current certificate with
the same names (``--force`` replaces it). Commands that take ``--db`` migrate
the schema to head first. ``token create`` prints the secret alone on stdout
(so scripts can capture it); everything else for humans goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from pki.ca import CAError, init_ca, load_ca
from pki.fleet import ensure_site, list_devices, record_certificate
from pki.issue import IssuedCertificate, issue_server_cert, issue_service_cert
from pki.renewal import needs_renewal
from pki.revocation import revoke_device
from pki.tokens import DEFAULT_TTL, create_token, list_tokens, revoke_token
from release import VERSION
from store.db import make_engine, session_scope, upgrade

log = logging.getLogger("pki.cli")

DB_ENV = "OUTLINK_DB_URL"
SERVER_STEM = "relay"
#: Names that would overwrite the CA's or the relay's files.
RESERVED_SERVICE_NAMES = frozenset({"ca", SERVER_STEM})


def _out(line: str) -> None:
    print(line, file=sys.stdout)


def _info(line: str) -> None:
    print(line, file=sys.stderr)


def _current(cert_file: Path, want_san: set[str]) -> bool:
    """True if ``cert_file`` exists, names exactly ``want_san`` and is not due for renewal."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    names = {str(getattr(n, "value", n)) for n in san}
    return names == want_san and not needs_renewal(cert, datetime.now(UTC))


def _write_leaf(
    args: argparse.Namespace,
    stem: str,
    want_san: set[str],
    issue: Callable[[], IssuedCertificate],
    kind: str,
    service_name: str | None = None,
) -> int:
    directory = Path(args.dir)
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    if not args.force and key_file.exists() and _current(cert_file, want_san):
        _info(f"{cert_file} is current; kept (use --force to replace)")
        return 0
    issued = issue()
    issued.write(cert_file, key_file)
    if args.db:
        upgrade(args.db)
        with session_scope(make_engine(args.db)) as session:
            record_certificate(session, issued.cert, kind, service_name=service_name)
    _info(f"wrote {cert_file} and {key_file}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    _, created = init_ca(Path(args.dir))
    _info(f"{'created' if created else 'kept existing'} fleet CA in {args.dir}")
    return 0


def cmd_server_cert(args: argparse.Namespace) -> int:
    ca = load_ca(Path(args.dir))
    dns, ips = args.dns or [], args.ip or []
    if not dns and not ips:
        _info("give at least one --dns or --ip")
        return 2
    return _write_leaf(
        args,
        args.name,
        {*dns, *ips},
        lambda: issue_server_cert(ca, dns_names=dns, ip_addresses=ips),
        "server",
    )


def cmd_service_cert(args: argparse.Namespace) -> int:
    if args.name in RESERVED_SERVICE_NAMES:
        _info(f"service name {args.name!r} is reserved")
        return 2
    ca = load_ca(Path(args.dir))
    return _write_leaf(
        args,
        args.name,
        {f"urn:outlink:service:{args.name}"},
        lambda: issue_service_cert(ca, args.name),
        "service",
        service_name=args.name,
    )


def _db(args: argparse.Namespace) -> str:
    upgrade(args.db)
    return str(args.db)


def cmd_token_create(args: argparse.Namespace) -> int:
    engine = make_engine(_db(args))
    with session_scope(engine) as session:
        site = ensure_site(
            session,
            args.customer,
            args.site,
            customer_name=args.customer_name,
            site_name=args.site_name,
        )
        token = create_token(
            session,
            site,
            ttl=timedelta(seconds=args.ttl),
            created_by=args.created_by,
            note=args.note,
        )
    if args.json:
        _out(
            json.dumps(
                {"id": token.id, "token": token.secret, "expires_at": token.expires_at.isoformat()}
            )
        )
    else:
        _out(token.secret)
        _info(
            f"token {token.id} for {args.customer}/{args.site}, expires "
            f"{token.expires_at:%Y-%m-%d %H:%M:%S} UTC; it is shown only once"
        )
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    engine = make_engine(_db(args))
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        tokens = list_tokens(session)
    rows = [
        {
            "id": t.id,
            "customer": t.customer,
            "site": t.site,
            "state": t.state(now),
            "created_at": t.created_at.isoformat(),
            "expires_at": t.expires_at.isoformat(),
            "used_by_device_id": t.used_by_device_id,
            "created_by": t.created_by,
            "note": t.note,
        }
        for t in tokens
        if args.all or t.state(now) == "active"
    ]
    if args.json:
        _out(json.dumps(rows))
        return 0
    for r in rows:
        _out(
            f"{r['id']:>5}  {r['state']:<8} {r['customer']}/{r['site']}  "
            f"expires {r['expires_at']}  {r['used_by_device_id'] or ''}  {r['note'] or ''}".rstrip()
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    engine = make_engine(_db(args))
    with session_scope(engine) as session:
        done = revoke_token(session, args.id)
    _info(f"token {args.id} {'revoked' if done else 'not found or no longer active'}")
    return 0 if done else 1


def cmd_revoke(args: argparse.Namespace) -> int:
    engine = make_engine(_db(args))
    with session_scope(engine) as session:
        done = revoke_device(session, args.device, reason=args.reason)
    _info(f"device {args.device} {'revoked' if done else 'not found'}")
    return 0 if done else 1


def cmd_devices(args: argparse.Namespace) -> int:
    engine = make_engine(_db(args))
    with session_scope(engine) as session:
        devices = list_devices(session)
    if args.json:
        _out(
            json.dumps(
                [
                    {
                        "device_id": d.device_id,
                        "customer": d.customer,
                        "site": d.site,
                        "enrolled_at": d.enrolled_at.isoformat(),
                        "revoked_at": d.revoked_at.isoformat() if d.revoked_at else None,
                        "revoked_reason": d.revoked_reason,
                    }
                    for d in devices
                ]
            )
        )
        return 0
    for d in devices:
        state = (
            f"revoked {d.revoked_at:%Y-%m-%d} ({d.revoked_reason})" if d.revoked_at else "active"
        )
        _out(f"{d.device_id}  {d.customer}/{d.site}  enrolled {d.enrolled_at:%Y-%m-%d}  {state}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="outlink-pki",
        description="Outlink's operator tool for the fleet CA, certificates and enrolment tokens.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def with_db(sp: argparse.ArgumentParser, required: bool = True) -> None:
        default = os.environ.get(DB_ENV)
        sp.add_argument(
            "--db",
            default=default,
            required=required and default is None,
            help=f"database URL (default: ${DB_ENV})",
        )

    sp = sub.add_parser("init", help="create the fleet CA in DIR (no-op if it exists)")
    sp.add_argument("--dir", required=True)
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser("server-cert", help="issue the relay's TLS server certificate")
    sp.add_argument("--dir", required=True, help="CA directory; writes NAME.pem/NAME.key there")
    sp.add_argument("--dns", action="append", help="DNS name (repeatable)")
    sp.add_argument("--ip", action="append", help="IP address (repeatable)")
    sp.add_argument("--name", default=SERVER_STEM, help=f"file stem (default {SERVER_STEM})")
    sp.add_argument("--force", action="store_true", help="replace a current certificate")
    with_db(sp, required=False)
    sp.set_defaults(func=cmd_server_cert)

    sp = sub.add_parser("service-cert", help="issue a service client certificate")
    sp.add_argument("--dir", required=True, help="CA directory; writes NAME.pem/NAME.key there")
    sp.add_argument("--name", required=True, help="service name, e.g. portal")
    sp.add_argument("--force", action="store_true", help="replace a current certificate")
    with_db(sp, required=False)
    sp.set_defaults(func=cmd_service_cert)

    token = sub.add_parser("token", help="enrolment tokens").add_subparsers(
        dest="token_command", required=True
    )
    sp = token.add_parser("create", help="create a one-time token (prints the secret once)")
    with_db(sp)
    sp.add_argument("--customer", required=True, help="customer slug (created if missing)")
    sp.add_argument("--customer-name", help="display name for a new customer")
    sp.add_argument("--site", required=True, help="site slug (created if missing)")
    sp.add_argument("--site-name", help="display name for a new site")
    sp.add_argument(
        "--ttl", type=int, default=int(DEFAULT_TTL.total_seconds()), help="seconds valid"
    )
    sp.add_argument("--created-by", help="who asked for it (kept for audit)")
    sp.add_argument("--note")
    sp.add_argument("--json", action="store_true", help="print id, token and expiry as JSON")
    sp.set_defaults(func=cmd_token_create)

    sp = token.add_parser("list", help="list active tokens (--all: every token)")
    with_db(sp)
    sp.add_argument("--all", action="store_true")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_token_list)

    sp = token.add_parser("revoke", help="revoke an unused token")
    with_db(sp)
    sp.add_argument("id", type=int)
    sp.set_defaults(func=cmd_token_revoke)

    sp = sub.add_parser("revoke", help="revoke a device and all its certificates")
    with_db(sp)
    sp.add_argument("--device", required=True)
    sp.add_argument("--reason", required=True)
    sp.set_defaults(func=cmd_revoke)

    sp = sub.add_parser("devices", help="list devices")
    with_db(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_devices)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``outlink-pki`` and ``python -m pki``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (CAError, ValueError, OSError) as exc:
        _info(f"outlink-pki: {exc}")
        return 1
