"""Administration: users (role, scopes, disable, password reset), roles, enrolment tokens.

Managing users needs ``users.manage`` *and* global scope: a manager limited to
some customers could otherwise hand out reach they do not have. Enrolment
tokens need ``devices.enroll`` and only cover sites the user fully reaches.
Every change is audited in the same transaction as the change itself.
Passwords made here are random, shown once, and must be changed at first login.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from pki.tokens import create_token, revoke_token
from protocol.ids import parse_device_id
from store.models import Customer, Device, EnrollmentToken, Site
from store.portal import Role, User, UserScope
from web import passwords, sessions
from web.authz import Perm, Principal, current_user, requires
from web.db import db
from web.forms import ActionForm, TokenForm, UserForm
from web.paging import page_number, paginate
from web.recorder import record
from web.scope import current_scope, get_or_404, scoped

bp = Blueprint("admin", __name__, url_prefix="/admin")

#: A user may be given at most this many individual device scopes (the form is a textarea).
MAX_DEVICE_SCOPES = 500


def _manager() -> Principal:
    user = current_user()
    if not user.scope.everything:
        abort(403)
    return user


def _user_or_404(user_id: int) -> User:
    row = db.session.get(User, user_id)
    if row is None:
        abort(404)
    return row


def _fill_choices(form: UserForm) -> None:
    form.role.choices = [
        (r.name, r.name.replace("_", " ").title())
        for r in db.session.execute(select(Role).order_by(Role.id)).scalars()
    ]
    form.customers.choices = [
        (c.id, c.name)
        for c in db.session.execute(select(Customer).order_by(Customer.name)).scalars()
    ]
    form.sites.choices = [
        (s.id, f"{c} / {s.name}")
        for s, c in db.session.execute(
            select(Site, Customer.name).join(Customer).order_by(Customer.name, Site.name)
        ).all()
    ]


def _device_ids(text: str) -> tuple[list[str], list[str]]:
    ids, bad = [], []
    for line in text.split():
        try:
            ids.append(parse_device_id(line.strip().lower()))
        except ValueError:
            bad.append(line[:40])
    return sorted(set(ids)), bad


def _scope_summary(user: User) -> str:
    if user.all_scope:
        return "all customers"
    kinds = {"customer": 0, "site": 0, "device": 0}
    for s in user.scopes:
        kinds["customer" if s.customer_id else "site" if s.site_id else "device"] += 1
    parts = [f"{n} {k}{'s' if n != 1 else ''}" for k, n in kinds.items() if n]
    return ", ".join(parts) or "nothing"


def _apply(form: UserForm, user: User) -> list[str]:
    """Copy role and scopes from the form; return problems (nothing is changed then)."""
    role = db.session.scalar(select(Role).where(Role.name == form.role.data))
    if role is None:
        return ["Unknown role."]
    customer_ids = set(form.customers.data or [])
    site_ids = set(form.sites.data or [])
    device_ids, bad = _device_ids(form.devices.data or "")
    problems = [f"Not a device id: {b}" for b in bad]
    if len(device_ids) > MAX_DEVICE_SCOPES:
        problems.append(f"At most {MAX_DEVICE_SCOPES} individual devices.")
    known_customers = set(
        db.session.scalars(select(Customer.id).where(Customer.id.in_(customer_ids)))
    )
    known_sites = set(db.session.scalars(select(Site.id).where(Site.id.in_(site_ids))))
    known_devices = set(db.session.scalars(select(Device.id).where(Device.id.in_(device_ids))))
    problems += [f"Unknown device: {d}" for d in device_ids if d not in known_devices]
    if customer_ids - known_customers or site_ids - known_sites:
        problems.append("Unknown customer or site.")
    if problems:
        return problems
    user.role_id, user.role = role.id, role
    user.display_name = (form.display_name.data or "").strip()
    user.all_scope = bool(form.all_scope.data)
    user.scopes = [UserScope(customer_id=c) for c in sorted(customer_ids)]
    user.scopes += [UserScope(site_id=s) for s in sorted(site_ids)]
    user.scopes += [UserScope(device_id=d) for d in device_ids]
    return []


def _scope_details(user: User) -> dict[str, object]:
    return {
        "role": user.role.name,
        "all_scope": user.all_scope,
        "customers": sorted(s.customer_id for s in user.scopes if s.customer_id),
        "sites": sorted(s.site_id for s in user.scopes if s.site_id),
        "devices": sorted(s.device_id for s in user.scopes if s.device_id),
    }


def _is_last_admin(user: User) -> bool:
    if user.role.name != "administrator" or not user.is_active:
        return False
    admins = db.session.scalar(
        select(func.count(User.id))
        .join(Role)
        .where(Role.name == "administrator", User.is_active.is_(True))
    )
    return admins == 1


@bp.route("/users")
@requires(Perm.USERS_MANAGE)
def users() -> str:
    _manager()
    q = request.args.get("q", "").strip().lower()[:64]
    stmt = select(User).order_by(User.username)
    if q:
        stmt = stmt.where(User.username.contains(q, autoescape=True))
    page = paginate(db.session, stmt, 50, page_number())
    return render_template("admin/users.html", page=page, q=q, scope_summary=_scope_summary)


@bp.route("/users/new", methods=["GET", "POST"])
@requires(Perm.USERS_MANAGE)
def user_new() -> str | Response:
    manager = _manager()
    form = UserForm()
    _fill_choices(form)
    problems: list[str] = []
    if form.validate_on_submit():
        username = (form.username.data or "").strip().lower()
        if db.session.scalar(select(User.id).where(User.username == username)) is not None:
            problems.append("That username is taken.")
        else:
            now = datetime.now(UTC)
            password = passwords.generate_password()
            user = User(
                username=username,
                password_hash=passwords.hash_password(password),
                created_at=now,
                created_by=manager.username,
                password_changed_at=now,
                must_change_password=True,
                is_active=True,
            )
            problems = _apply(form, user)
            if not problems:
                db.session.add(user)
                db.session.flush()
                record(
                    "admin.user_created",
                    summary=f"created user {username}",
                    details={"user": username, **_scope_details(user)},
                )
                db.session.commit()
                return render_template(
                    "admin/user_secret.html", user=user, password=password, created=True
                )
    return render_template("admin/user_form.html", form=form, user=None, problems=problems)


@bp.route("/users/<int:user_id>", methods=["GET", "POST"])
@requires(Perm.USERS_MANAGE)
def user_edit(user_id: int) -> str | Response:
    manager = _manager()
    user = _user_or_404(user_id)
    form = UserForm(obj=None if request.method == "POST" else user)
    _fill_choices(form)
    form.username.data = user.username  # never changes: audit rows name it
    if request.method == "GET":
        form.role.data = user.role.name
        form.customers.data = [s.customer_id for s in user.scopes if s.customer_id]
        form.sites.data = [s.site_id for s in user.scopes if s.site_id]
        form.devices.data = "\n".join(s.device_id for s in user.scopes if s.device_id)
    problems: list[str] = []
    if form.validate_on_submit():
        before = _scope_details(user)
        if user.id == manager.id and form.role.data != "administrator":
            problems.append("You cannot remove your own administrator role.")
        else:
            problems = _apply(form, user)
        if not problems:
            record(
                "admin.user_changed",
                summary=f"changed role/scopes of {user.username}",
                details={"user": user.username, "before": before, "after": _scope_details(user)},
            )
            db.session.commit()
            flash(f"Saved {user.username}. The change applies to their next request.", "success")
            return redirect(url_for("admin.user_edit", user_id=user.id))
        db.session.rollback()
    return render_template(
        "admin/user_form.html", form=form, user=user, problems=problems, action_form=ActionForm()
    )


@bp.route("/users/<int:user_id>/disable", methods=["POST"])
@requires(Perm.USERS_MANAGE)
def user_disable(user_id: int) -> Response:
    manager = _manager()
    user = _user_or_404(user_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    if user.id == manager.id or _is_last_admin(user):
        flash("You cannot disable yourself or the last administrator.", "error")
        return redirect(url_for("admin.user_edit", user_id=user.id))
    user.is_active = False
    ended = sessions.end_all_for_user(user.id)
    record(
        "admin.user_disabled",
        summary=f"disabled {user.username}; {ended} sessions ended",
        details={"user": user.username},
    )
    db.session.commit()
    flash(f"{user.username} is disabled and signed out everywhere.", "success")
    return redirect(url_for("admin.user_edit", user_id=user.id))


@bp.route("/users/<int:user_id>/enable", methods=["POST"])
@requires(Perm.USERS_MANAGE)
def user_enable(user_id: int) -> Response:
    _manager()
    user = _user_or_404(user_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    user.is_active = True
    record(
        "admin.user_enabled", summary=f"enabled {user.username}", details={"user": user.username}
    )
    db.session.commit()
    flash(f"{user.username} is enabled.", "success")
    return redirect(url_for("admin.user_edit", user_id=user.id))


@bp.route("/users/<int:user_id>/reset-password", methods=["POST"])
@requires(Perm.USERS_MANAGE)
def user_reset_password(user_id: int) -> str | Response:
    _manager()
    user = _user_or_404(user_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    password = passwords.generate_password()
    user.password_hash = passwords.hash_password(password)
    user.must_change_password = True
    user.password_changed_at = datetime.now(UTC)
    ended = sessions.end_all_for_user(user.id)
    record(
        "admin.password_reset",
        summary=f"reset the password of {user.username}; {ended} sessions ended",
        details={"user": user.username},
    )
    db.session.commit()
    return render_template("admin/user_secret.html", user=user, password=password, created=False)


@bp.route("/users/<int:user_id>/reset-second-factor", methods=["POST"])
@requires(Perm.USERS_MANAGE)
def user_reset_second_factor(user_id: int) -> Response:
    _manager()
    user = _user_or_404(user_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    user.totp_secret, user.totp_last_step, user.cert_fingerprint = None, None, None
    record(
        "admin.second_factor_reset",
        summary=f"removed the authenticator and client certificate of {user.username}",
        details={"user": user.username},
    )
    db.session.commit()
    flash(f"{user.username} has no authenticator or client certificate now.", "success")
    return redirect(url_for("admin.user_edit", user_id=user.id))


@bp.route("/roles")
@requires(Perm.USERS_MANAGE)
def roles() -> str:
    rows = db.session.execute(select(Role).order_by(Role.id)).scalars().all()
    return render_template("admin/roles.html", roles=rows, perms=list(Perm))


def _site_choices() -> list[tuple[int, str]]:
    scope = current_scope()
    rows = db.session.execute(
        scoped(Site, Site, Customer.name)
        .join(Customer, Site.customer_id == Customer.id)
        .order_by(Customer.name, Site.name)
    ).all()
    return [(s.id, f"{c} / {s.name}") for s, c in rows if scope.site_fully_reached(s)]


@bp.route("/tokens", methods=["GET", "POST"])
@requires(Perm.DEVICES_ENROLL)
def tokens() -> str | Response:
    user = current_user()
    form = TokenForm()
    form.site.choices = _site_choices()
    if form.validate_on_submit():
        site = get_or_404(Site, form.site.data)
        if not user.scope.site_fully_reached(site):
            abort(404)
        ttl = timedelta(hours=form.hours.data or 1)
        token = create_token(
            db.session, site, ttl=ttl, created_by=user.username, note=(form.note.data or None)
        )
        record(
            "admin.token_created",
            customer_id=site.customer_id,
            site_id=site.id,
            summary=f"created enrolment token {token.id} for {site.name}",
            details={"token_id": token.id, "expires_at": token.expires_at.isoformat()},
        )
        db.session.commit()
        return render_template("admin/token_secret.html", token=token, site=site)
    stmt = (
        scoped(
            EnrollmentToken,
            EnrollmentToken,
            Customer.name.label("customer_name"),
            Site.name.label("site_name"),
        )
        .join(Customer, EnrollmentToken.customer_id == Customer.id)
        .join(Site, EnrollmentToken.site_id == Site.id)
        .order_by(EnrollmentToken.id.desc())
    )
    page = paginate(db.session, stmt, 50, page_number())
    return render_template(
        "admin/tokens.html", form=form, page=page, now=datetime.now(UTC), action_form=ActionForm()
    )


@bp.route("/tokens/<int:token_id>/revoke", methods=["POST"])
@requires(Perm.DEVICES_ENROLL)
def token_revoke(token_id: int) -> Response:
    token = get_or_404(EnrollmentToken, token_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    if revoke_token(db.session, token.id):
        record(
            "admin.token_revoked",
            customer_id=token.customer_id,
            site_id=token.site_id,
            summary=f"revoked enrolment token {token.id}",
            details={"token_id": token.id},
        )
        db.session.commit()
        flash(f"Token {token.id} revoked.", "success")
    else:
        flash(f"Token {token.id} was already used or revoked.", "info")
    return redirect(url_for("admin.tokens"))
