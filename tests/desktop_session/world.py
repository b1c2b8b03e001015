"""A small world for desktop-session tests: two customers, a device each, users per role.

Plain SQLAlchemy (no Flask), so the store, relay and portal tests share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from pki.fleet import create_device, ensure_site
from store.db import session_scope
from store.portal import Permission, Role, RolePermission, User, UserScope
from web.passwords import hash_password

PASSWORD = "correct horse battery"


@dataclass
class World:
    """Ids of what :func:`seed` made."""

    customer_a: int
    customer_b: int
    device_a: str
    device_b: str
    users: dict[str, int]


def add_user(
    session: Session,
    username: str,
    role: str,
    *,
    all_scope: bool = False,
    customers: tuple[int, ...] = (),
    sites: tuple[int, ...] = (),
    password_hash: str | None = None,
) -> int:
    now = datetime.now(UTC)
    role_id = session.scalar(select(Role.id).where(Role.name == role))
    user = User(
        username=username,
        display_name=username.title(),
        password_hash=password_hash or "x",
        role_id=role_id,
        all_scope=all_scope,
        is_active=True,
        must_change_password=False,
        created_at=now,
        password_changed_at=now,
        scopes=[UserScope(customer_id=c) for c in customers]
        + [UserScope(site_id=s) for s in sites],
    )
    session.add(user)
    session.flush()
    return user.id


def seed(engine: Engine, *, with_passwords: bool = False, device_a: str | None = None) -> World:
    """Customers acme (device A, engineers ``eng`` and ``eng2``, analyst ``ana``, site
    contact ``contact``) and globex (device B); ``root`` reaches everything.
    ``device_a``: use this id for device A (e.g. the one a certificate names)."""
    password = hash_password(PASSWORD) if with_passwords else None
    with session_scope(engine) as session:
        site_a = ensure_site(session, "acme", "lab", customer_name="Acme Hospital", site_name="Lab")
        site_b = ensure_site(session, "globex", "main", customer_name="Globex Imaging")
        if device_a is None:
            dev_a = create_device(session, site_a).id
        else:
            from store.models import Device

            dev_a = device_a
            if session.get(Device, device_a) is None:
                session.add(
                    Device(
                        id=device_a,
                        customer_id=site_a.customer_id,
                        site_id=site_a.id,
                        enrolled_at=datetime.now(UTC),
                    )
                )
                session.flush()
        dev_b = create_device(session, site_b).id
        users = {
            "root": add_user(
                session, "root", "administrator", all_scope=True, password_hash=password
            ),
            "eng": add_user(
                session,
                "eng",
                "service_engineer",
                customers=(site_a.customer_id,),
                password_hash=password,
            ),
            "eng2": add_user(
                session,
                "eng2",
                "service_engineer",
                customers=(site_a.customer_id,),
                password_hash=password,
            ),
            "ana": add_user(
                session, "ana", "analyst", customers=(site_a.customer_id,), password_hash=password
            ),
            "contact": add_user(
                session, "contact", "site_contact", sites=(site_a.id,), password_hash=password
            ),
        }
        return World(site_a.customer_id, site_b.customer_id, dev_a, dev_b, users)


def disable_user(engine: Engine, user_id: int) -> None:
    with session_scope(engine) as session:
        session.execute(update(User).where(User.id == user_id).values(is_active=False))


def revoke_permission(engine: Engine, role: str, permission: str) -> None:
    """Take ``permission`` away from every user of ``role``."""
    with session_scope(engine) as session:
        role_id = session.scalar(select(Role.id).where(Role.name == role))
        perm_id = session.scalar(select(Permission.id).where(Permission.name == permission))
        session.execute(
            delete(RolePermission).where(
                RolePermission.role_id == role_id, RolePermission.permission_id == perm_id
            )
        )
