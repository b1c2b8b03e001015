"""Who may call what: permissions, access declarations on views, and the deny-by-default guard.

Every view function carries exactly one declaration -- ``@public``,
``@authenticated`` or ``@requires(Perm.X)``. The guard (the app's first
``before_request``) looks the declaration up for the matched endpoint and
refuses any endpoint without one, so a new route is closed until its author
says who may use it. The user, role, permissions and scopes are read from the
database on every request: a demoted or disabled user loses access on the next
click, not at the next login.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar

from flask import abort, current_app, g, redirect, request, session, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response as WerkzeugResponse

from store.portal import Permission, RolePermission, User, UserScope
from web.db import db
from web.scope import Scope
from web.sessions import ServerSession, end_current

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
ACCESS_ATTR = "_outlink_access"


class Perm(StrEnum):
    """Named permissions (seeded by migrations 0002, 0004 and 0005; a test keeps them in step)."""

    DEVICE_VIEW = "device.view"
    TELEMETRY_VIEW = "telemetry.view"
    FILES_VIEW = "files.view"
    DESKTOP_VIEW = "desktop.view"
    DESKTOP_CONTROL = "desktop.control"
    DESKTOP_CLIPBOARD = "desktop.clipboard"
    DESKTOP_CONSENT = "desktop.consent"
    DIAGNOSTICS_SHELL = "diagnostics.shell"
    UPDATES_PUSH = "updates.push"
    DEVICES_ENROLL = "devices.enroll"
    DEVICES_REVOKE = "devices.revoke"
    USERS_MANAGE = "users.manage"
    AUDIT_READ = "audit.read"
    ALARMS_HANDLE = "alarms.handle"
    RULES_MANAGE = "rules.manage"


ROLE_NAMES = ("administrator", "service_engineer", "analyst", "site_contact")


@dataclass(frozen=True, slots=True)
class Access:
    """A view's declaration: ``public``, ``authenticated`` (any user) or one permission."""

    kind: Literal["public", "authenticated", "permission"]
    perm: Perm | None = None

    def label(self) -> str:
        return str(self.perm) if self.perm is not None else self.kind


def _declare(view: F, access: Access) -> F:
    if getattr(view, ACCESS_ATTR, None) is not None:
        raise TypeError(f"{view.__name__} already declares its access")
    setattr(view, ACCESS_ATTR, access)
    return view


def public(view: F) -> F:
    """Anyone, logged in or not (login page, static files, health)."""
    return _declare(view, Access("public"))


def authenticated(view: F) -> F:
    """Any logged-in user (own account pages, logout)."""
    return _declare(view, Access("authenticated"))


def requires(perm: Perm) -> Callable[[F], F]:
    """A logged-in user whose role grants ``perm``."""
    return lambda view: _declare(view, Access("permission", perm))


def access_of(endpoint: str) -> Access | None:
    """The declaration of ``endpoint``'s view, or None if it has none."""
    view = current_app.view_functions.get(endpoint)
    return getattr(view, ACCESS_ATTR, None)


@dataclass(frozen=True, slots=True)
class Principal:
    """The logged-in user as this request sees them."""

    id: int
    username: str
    display_name: str
    role: str
    perms: frozenset[str]
    scope: Scope
    must_change_password: bool
    session_id: str
    auth_method: str | None

    def can(self, perm: Perm) -> bool:
        return perm in self.perms


def load_principal(sess: ServerSession) -> Principal | None:
    """The active user behind ``sess``, or None (and the session ends if the user is gone)."""
    if sess.user_id is None or sess.row_id is None:
        return None
    user = db.session.get(User, sess.user_id)
    if user is None or not user.is_active:
        end_current(sess)
        db.session.commit()
        return None
    perms = frozenset(
        db.session.execute(
            select(Permission.name)
            .join(RolePermission, RolePermission.permission_id == Permission.id)
            .where(RolePermission.role_id == user.role_id)
        ).scalars()
    )
    scopes = db.session.execute(
        select(UserScope.customer_id, UserScope.site_id, UserScope.device_id).where(
            UserScope.user_id == user.id
        )
    ).all()
    scope = Scope(
        everything=user.all_scope,
        customer_ids=frozenset(s.customer_id for s in scopes if s.customer_id is not None),
        site_ids=frozenset(s.site_id for s in scopes if s.site_id is not None),
        device_ids=frozenset(s.device_id for s in scopes if s.device_id is not None),
    )
    return Principal(
        id=user.id,
        username=user.username,
        display_name=user.display_name or user.username,
        role=user.role.name,
        perms=perms,
        scope=scope,
        must_change_password=user.must_change_password,
        session_id=sess.row_id,
        auth_method=sess.auth_method,
    )


def wants_json() -> bool:
    """API calls get JSON errors; pages get HTML."""
    return request.path.startswith("/api/")


#: Endpoints a user who must change their password may still reach.
PASSWORD_CHANGE_ENDPOINTS = frozenset({"auth.password", "auth.logout", "static"})


def guard() -> WerkzeugResponse | None:
    """The first ``before_request``: deny unless the endpoint's declaration allows it."""
    sess = session
    assert isinstance(sess, ServerSession)
    if sess.unavailable:
        abort(503)
    endpoint = request.endpoint
    if endpoint is None:  # no route matched: let routing answer 404/405
        g.user = None
        return None
    access = access_of(endpoint)
    if access is None:
        log.error("! endpoint %s has no access declaration: refused", endpoint)
        abort(403)
    g.user = load_principal(sess)
    if access.kind == "public":
        return None
    user: Principal | None = g.user
    if user is None:
        if wants_json() or request.method != "GET":
            abort(401)
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if user.must_change_password and endpoint not in PASSWORD_CHANGE_ENDPOINTS:
        if wants_json():
            abort(403)
        return redirect(url_for("auth.password"))
    if access.perm is not None and not user.can(access.perm):
        abort(403)
    return None


def current_user() -> Principal:
    """The logged-in user of a protected view (the guard guarantees there is one)."""
    user: Principal | None = g.get("user")
    if user is None:
        abort(401)
    return user
