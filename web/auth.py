"""Sign-in, second factor, client-certificate login, sign-out, and the user's own account.

Wrong password, unknown user, disabled and locked accounts all get the same
page and status, and each costs one argon2 verification (a dummy one for names
that do not exist), so neither the answer nor its timing tells them apart.
Only the audit trail records which it was.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import pyotp
import segno
from cryptography.fernet import Fernet
from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from markupsafe import Markup
from sqlalchemy import select
from werkzeug.wrappers import Response

from store.portal import USERNAME_MAX, User, WebSession
from web import passwords, recovery, sealing, sessions, throttle
from web.authz import authenticated, current_user, public
from web.certauth import PEER_CERT_KEY, fingerprint, staff_username
from web.db import db
from web.forms import ActionForm, LoginForm, PasswordChangeForm, TotpForm
from web.recorder import client_addr, record
from web.sessions import ServerSession

bp = Blueprint("auth", __name__)

LOGIN_FAILED = "Invalid username or password."
#: Time allowed between the password step and the code step.
SECOND_FACTOR_WINDOW = timedelta(minutes=5)
#: RFC 6238 step; one step of clock drift is accepted either way (window 1).
TOTP_STEP = 30
TOTP_WINDOW = 1


def _session() -> ServerSession:
    assert isinstance(session, ServerSession)
    return session


def _policy() -> throttle.ThrottlePolicy:
    config = current_app.config["OUTLINK"]
    return throttle.ThrottlePolicy(
        free_pair=config.login_max_failures,
        free_addr=config.login_max_failures_per_addr,
        free_user=config.login_max_failures_per_account,
        first_delay=timedelta(seconds=config.login_delay_seconds),
        max_delay=timedelta(minutes=config.lockout_minutes),
        known_for=timedelta(days=config.login_usual_address_days),
    )


#: Rounds of percent-decoding checked: a check that stops at one is fooled by `%252F`.
_NEXT_DECODE_ROUNDS = 3


def _is_local_path(target: str) -> bool:
    """True for a path on this origin and nothing a browser could read as another host.

    Browsers strip tabs, newlines and leading spaces, treat ``\\`` as ``/`` and ``//``
    as a new host, and some proxies decode ``%2F``. So the target must be printable
    ASCII, and it and each of its percent-decodings must begin with exactly one ``/``,
    hold no backslash or control character, and carry no scheme or host.
    """
    if any(not "!" <= c <= "~" for c in target):
        return False
    for _ in range(_NEXT_DECODE_ROUNDS):
        if not target.startswith("/") or target.startswith("//"):
            return False
        if any(c < " " or c in "\x7f\\" for c in target):
            return False
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            return False
        decoded = unquote(target)
        if decoded == target:
            return True
        target = decoded
    return False  # still encoded after several rounds: nobody needs that


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: ``target`` if it is a local path, else home."""
    if target and _is_local_path(target):
        return target
    return url_for("fleet.overview")


def _complete_login(
    user: User, method: str, next_url: str | None, notice: str | None = None
) -> Response:
    """Start the session; ``notice`` is flashed in it (the pre-login session is gone)."""
    now = datetime.now(UTC)
    sessions.begin_authenticated(
        _session(), user.id, method, client_addr(), request.headers.get("User-Agent")
    )
    if notice:
        flash(notice, "info")
    user.last_login_at = now
    record(
        "auth.login",
        actor=user.username,
        user_id=user.id,
        summary=f"{user.username} signed in ({method})",
        details={"method": method},
    )
    db.session.commit()
    if user.must_change_password:
        flash("Please choose a new password before you continue.", "info")
        return redirect(url_for("auth.password"))
    return redirect(safe_next(next_url))


def _record_delays(name: str, started: list[tuple[str, timedelta]]) -> None:
    """Audit each throttle delay that a failure has just started."""
    for kind, delay in started:
        record(
            "auth.lockout",
            outcome="failure",
            actor=name or None,
            summary=f"sign-in delayed for this {_DELAY_SUBJECT[kind]}",
            details={"kind": kind, "seconds": int(delay.total_seconds())},
        )


_DELAY_SUBJECT = {
    "pair": "account from this address",
    "addr": "address",
    "user": "account from unusual addresses",
}


def _login_failed(
    form: LoginForm, name: str, reason: str, started: list[tuple[str, timedelta]]
) -> str:
    record(
        "auth.login",
        outcome="failure",
        actor=name or None,
        summary=f"failed sign-in for {name!r}",
        details={"reason": reason},
    )
    _record_delays(name, started)
    db.session.commit()
    return render_template(
        "auth/login.html",
        form=form,
        error=LOGIN_FAILED,
        next=request.form.get("next", ""),
        cert_offered=_cert_offered(),
    )


def _cert_offered() -> bool:
    return PEER_CERT_KEY in request.environ


@bp.route("/login", methods=["GET", "POST"])
@public
def login() -> Response | str:
    if g.user is not None:
        return redirect(safe_next(request.args.get("next")))
    form = LoginForm()
    if not form.validate_on_submit():
        return render_template(
            "auth/login.html",
            form=form,
            error=None,
            next=request.args.get("next", ""),
            cert_offered=_cert_offered(),
        )
    name = (form.username.data or "").strip().lower()[:USERNAME_MAX]
    password = form.password.data or ""
    now, addr = datetime.now(UTC), client_addr()
    locked = throttle.is_locked(db.session, name, addr, now, _policy())
    user = db.session.scalar(select(User).where(User.username == name))
    if user is None:
        passwords.dummy_verify()
        matched = False
    else:
        matched = passwords.verify_password(user.password_hash, password)
    if locked:
        return _login_failed(form, name, "locked", [])
    if not matched or user is None or not user.is_active:
        reason = "unknown_user" if user is None else ("bad_password" if not matched else "disabled")
        newly = throttle.record_failure(db.session, name, addr, now, _policy())
        return _login_failed(form, name, reason, newly)
    throttle.record_success(db.session, name, addr, now)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    next_url = request.form.get("next")
    if user.totp_secret:
        _session()["pending_2fa"] = {"uid": user.id, "at": time.time(), "next": next_url or ""}
        db.session.commit()
        return redirect(url_for("auth.totp"))
    return _complete_login(user, "password", next_url)


def _totp_step(secret: str, code: str, now: float) -> int | None:
    """The time step ``code`` is valid for (window 1), or None."""
    totp = pyotp.TOTP(secret, interval=TOTP_STEP)
    for offset in range(-TOTP_WINDOW, TOTP_WINDOW + 1):
        at = now + offset * TOTP_STEP
        if pyotp.utils.strings_equal(totp.at(at), code):
            return int(at // TOTP_STEP)
    return None


def _box() -> Fernet:
    return sealing.totp_box(current_app.config["SECRET_KEY"])


def check_totp(user: User, code: str) -> bool:
    """Verify a code and burn its step, so an observed code cannot be replayed."""
    secret = sealing.unseal(_box(), user.totp_secret) if user.totp_secret else None
    if secret is None:
        return False
    step = _totp_step(secret, code.strip(), time.time())
    if step is None or (user.totp_last_step is not None and step <= user.totp_last_step):
        return False
    user.totp_last_step = step
    return True


@bp.route("/login/totp", methods=["GET", "POST"])
@public
def totp() -> Response | str:
    pending: dict[str, Any] | None = _session().get("pending_2fa")
    if not pending or time.time() - pending["at"] > SECOND_FACTOR_WINDOW.total_seconds():
        _session().pop("pending_2fa", None)
        return redirect(url_for("auth.login"))
    form = TotpForm()
    if not form.validate_on_submit():
        return render_template("auth/totp.html", form=form, error=None)
    user = db.session.get(User, pending["uid"])
    now, addr = datetime.now(UTC), client_addr()
    if user is None or not user.is_active:
        _session().pop("pending_2fa", None)
        return redirect(url_for("auth.login"))
    code = form.code.data or ""
    locked = throttle.is_locked(db.session, user.username, addr, now, _policy())
    if locked or not _second_factor(user, code, now):
        started = (
            []
            if locked
            else throttle.record_failure(db.session, user.username, addr, now, _policy())
        )
        record(
            "auth.totp",
            outcome="failure",
            actor=user.username,
            user_id=user.id,
            summary="wrong or reused authentication code",
            details={"locked": locked},
        )
        _record_delays(user.username, started)
        if started:
            _session().pop("pending_2fa", None)
        db.session.commit()
        return render_template("auth/totp.html", form=form, error="Invalid code.")
    _session().pop("pending_2fa", None)
    throttle.record_success(db.session, user.username, addr, now)
    if not recovery.looks_like_code(code):
        return _complete_login(user, "password+totp", pending.get("next"))
    left = recovery.remaining(db.session, user.id)
    record(
        "auth.recovery_code_used",
        actor=user.username,
        user_id=user.id,
        summary=f"{user.username} signed in with a recovery code; {left} left",
        details={"remaining": left},
    )
    return _complete_login(
        user,
        "password+recovery_code",
        pending.get("next"),
        f"You signed in with a recovery code; {left} left. Each works only once.",
    )


def _second_factor(user: User, code: str, now: datetime) -> bool:
    """A current TOTP code, or one of the user's unused recovery codes (spent by this)."""
    if recovery.looks_like_code(code):
        return recovery.spend(db.session, current_app.config["SECRET_KEY"], user.id, code, now)
    return check_totp(user, code)


@bp.route("/login/certificate", methods=["POST"])
@public
def certificate() -> Response:
    der = request.environ.get(PEER_CERT_KEY)
    if der is None:
        flash("Your browser did not present a staff certificate.", "error")
        return redirect(url_for("auth.login"))
    name = staff_username(der)
    user = db.session.scalar(select(User).where(User.cert_fingerprint == fingerprint(der)))
    if user is None or not user.is_active or user.username != name:
        record(
            "auth.login",
            outcome="failure",
            actor=name,
            summary="client certificate not accepted",
            details={"method": "certificate", "fingerprint": fingerprint(der)},
        )
        db.session.commit()
        flash("This certificate is not linked to an active account.", "error")
        return redirect(url_for("auth.login"))
    return _complete_login(user, "certificate", request.form.get("next"))


@bp.route("/logout", methods=["POST"])
@authenticated
def logout() -> Response:
    user = current_user()
    record("auth.logout", summary=f"{user.username} signed out")
    sessions.end_current(_session())
    db.session.commit()
    return redirect(url_for("auth.login"))


@bp.route("/logout-everywhere", methods=["POST"])
@authenticated
def logout_everywhere() -> Response:
    user = current_user()
    ended = sessions.end_all_for_user(user.id)
    record("auth.logout_everywhere", summary=f"{user.username} ended all {ended} sessions")
    sessions.end_current(_session())
    db.session.commit()
    return redirect(url_for("auth.login"))


@bp.route("/account")
@authenticated
def account() -> str:
    user = current_user()
    row = db.session.get(User, user.id)
    own_sessions = (
        db.session.execute(
            select(WebSession)
            .where(WebSession.user_id == user.id)
            .order_by(WebSession.last_seen_at.desc())
        )
        .scalars()
        .all()
    )
    return render_template(
        "auth/account.html", account=row, sessions=own_sessions, form=ActionForm()
    )


@bp.route("/account/password", methods=["GET", "POST"])
@authenticated
def password() -> Response | str:
    user = current_user()
    form = PasswordChangeForm()
    errors: list[str] = []
    if form.validate_on_submit():
        row = db.session.get(User, user.id)
        assert row is not None
        new = form.new.data or ""
        if not passwords.verify_password(row.password_hash, form.current.data or ""):
            errors.append("The current password is not correct.")
        elif new != form.confirm.data:
            errors.append("The new passwords do not match.")
        elif new == form.current.data:
            errors.append("Choose a password different from the current one.")
        else:
            errors = passwords.policy_problems(new, row.username)
        if not errors:
            row.password_hash = passwords.hash_password(new)
            row.must_change_password = False
            row.password_changed_at = datetime.now(UTC)
            ended = sessions.end_all_for_user(row.id, keep=user.session_id)
            sessions.begin_authenticated(
                _session(),
                row.id,
                user.auth_method or "password",
                client_addr(),
                request.headers.get("User-Agent"),
            )
            record(
                "account.password_changed",
                summary=f"{row.username} changed their password; {ended} other sessions ended",
            )
            db.session.commit()
            flash("Password changed. Your other sessions were signed out.", "success")
            return redirect(url_for("auth.account"))
        record(
            "account.password_changed",
            outcome="failure",
            summary="password change refused",
            details={"problems": errors},
        )
        db.session.commit()
    return render_template(
        "auth/password.html", form=form, errors=errors, forced=user.must_change_password
    )


@bp.route("/account/totp", methods=["GET", "POST"])
@authenticated
def totp_setup() -> Response | str:
    user = current_user()
    row = db.session.get(User, user.id)
    assert row is not None
    if row.totp_secret:
        return _totp_enabled_page(row, TotpForm())
    # The secret being enrolled waits in the server-side session, sealed like the stored one.
    pending = _session().get("totp_enrol")
    secret = (pending and sealing.unseal(_box(), pending)) or pyotp.random_base32()
    _session()["totp_enrol"] = sealing.seal(_box(), secret)
    form = TotpForm()
    error = None
    if form.validate_on_submit():
        step = _totp_step(secret, (form.code.data or "").strip(), time.time())
        if step is not None:
            row.totp_secret, row.totp_last_step = sealing.seal(_box(), secret), step
            _session().pop("totp_enrol", None)
            codes = recovery.replace_codes(db.session, current_app.config["SECRET_KEY"], row.id)
            record(
                "account.totp_enabled",
                summary=f"{row.username} enabled a second factor",
                details={"recovery_codes": len(codes)},
            )
            db.session.commit()
            return render_template("auth/recovery_codes.html", codes=codes)
        error = "That code does not match. Check the device clock and try again."
    uri = pyotp.TOTP(secret).provisioning_uri(name=row.username, issuer_name="Outlink")
    return render_template(
        "auth/totp_setup.html",
        enabled=False,
        form=form,
        secret=secret,
        uri=uri,
        qr=Markup(setup_qr_svg(uri)),  # noqa: S704  (segno's SVG: the link is only path data)
        error=error,
    )


def setup_qr_svg(uri: str) -> str:
    """The setup link as an inline SVG QR code (dark on white, so every app can scan it)."""
    return str(segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff"))


@bp.route("/account/totp/disable", methods=["POST"])
@authenticated
def totp_disable() -> Response | str:
    row, refused = _confirmed_by_totp()
    if refused is not None:
        return refused  # type: ignore[return-value]
    row.totp_secret, row.totp_last_step = None, None
    recovery.discard(db.session, row.id)
    record("account.totp_disabled", summary=f"{row.username} turned off the second factor")
    db.session.commit()
    flash("Two-step sign-in is off.", "info")
    return redirect(url_for("auth.account"))


@bp.route("/account/totp/recovery-codes", methods=["POST"])
@authenticated
def totp_recovery_codes() -> Response | str:
    """Ten new recovery codes for a current TOTP code; the old ones stop working."""
    row, refused = _confirmed_by_totp()
    if refused is not None:
        return refused  # type: ignore[return-value]
    codes = recovery.replace_codes(db.session, current_app.config["SECRET_KEY"], row.id)
    record(
        "account.recovery_codes_replaced",
        summary=f"{row.username} replaced their recovery codes",
        details={"recovery_codes": len(codes)},
    )
    db.session.commit()
    return render_template("auth/recovery_codes.html", codes=codes)


def _confirmed_by_totp() -> tuple[User, tuple[str, int] | None]:
    """The signed-in user's row, and the page to answer with unless the form carries a
    current TOTP code (turning the factor off and new recovery codes both need one)."""
    row = db.session.get(User, current_user().id)
    assert row is not None
    form = TotpForm()
    if form.validate_on_submit() and check_totp(row, form.code.data or ""):
        return row, None
    db.session.rollback()
    return row, (_totp_enabled_page(row, form, "Invalid code."), 400)


def _totp_enabled_page(row: User, form: TotpForm, error: str | None = None) -> str:
    return render_template(
        "auth/totp_setup.html",
        enabled=True,
        form=form,
        error=error,
        recovery_left=recovery.remaining(db.session, row.id),
    )
