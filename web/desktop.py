"""Remote desktop sessions in the portal: request, live state, viewer tickets, end, and the
site contact's answer where the device allows it.

The flow (the lead's session contract; rules in :mod:`store.desktop`):

1. ``POST /devices/<id>/desktop`` stores a ``requested`` session and asks the agent
   through the relay (``instruct desktop.request``). Its answer is ``prompting`` (the
   person at the device is asked) or ``accepted`` (the device asks for no consent);
   no answer means ``failed`` (device offline).
2. The page polls ``GET /api/v1/devices/<id>/desktop?session=…`` every second: the state
   and the countdown. The agent reports decisions to the relay, which records them; a
   request still undecided past its deadline shows (and is recorded) as ``timeout``.
3. Once ``accepted``, the page asks ``POST …/desktop/ticket`` for a single-use ticket
   (60 s, bound to user, device, session, mode) and opens the relay's ``/view`` with it;
   after a dropped connection it asks for a new one while the session runs.
4. ``POST …/desktop/end`` ends it (the agent stops the stream and says so).

Who: requesting needs ``desktop.view`` (and ``desktop.control`` for control), checked
with :func:`store.desktop.viewer_rights`, the same function the relay runs at join and
every few seconds after; scope as everywhere (out of scope = 404). Only the engineer who
asked sees the session's state and gets its tickets. ``desktop.consent`` lets a role see
the answer routes, but an answer counts only under the four-eyes rule,
:func:`store.consent.may_answer` (a site contact of the device's site, not the requester,
no staff role); the agent then takes it only if its own policy allows answers from the
portal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from werkzeug.wrappers import Response

from protocol.desktop import (
    BY_DEVICE,
    BY_POLICY,
    BY_SITE_CONTACT,
    ERR_CONFLICT,
    ERR_FORBIDDEN,
    MAX_REASON,
    ConsentAnswer,
    Decision,
    EndReason,
    EndRequest,
    Mode,
    Requester,
    RequestReply,
    SessionRequest,
    State,
    StateReply,
    parse_session_id,
)
from protocol.envelope import ERR_BUSY, ERR_TIMEOUT, MessageError
from protocol.rpc import ERR_OFFLINE
from store import desktop
from store.consent import may_answer
from store.desktop import Actor, DesktopSession
from store.models import Device
from web.authz import Perm, current_user, requires
from web.db import db
from web.fleet import load_device
from web.recorder import client_addr, record
from web.relay import relay_link
from web.security import CSP

log = logging.getLogger(__name__)

bp = Blueprint("desktop", __name__)

T = TypeVar("T")

#: Sessions listed on the request page (the device's recent history).
HISTORY = 10

#: An answer's decisions as the form sends them (anything else is not echoed into the trail).
DECISIONS = frozenset(str(d) for d in Decision)

#: The failure recorded when the device's answer does not parse.
BAD_ANSWER = "bad-answer"

STATE_TEXT = {
    State.REQUESTED: "Sending the request to the device…",
    State.PROMPTING: "Waiting for an answer at the device.",
    State.ACCEPTED: "Accepted {by}. Connecting…",
    State.STARTED: "Connected.",
    State.DENIED: "The request was denied {by}.",
    State.TIMEOUT: "Nobody answered at the device in time: the request was declined automatically.",
    State.FAILED: "The device could not be asked: {reason}. Nothing was started.",
    State.ENDED: "The session ended: {reason}.",
}

#: Why a request could not be delivered: the relay's and the agent's error codes, and
#: `web.relay.RelayLink.instruct`'s own.
FAILURES: dict[str, str] = {
    ERR_OFFLINE: "it is offline",
    "no-relay": "it is offline (no relay is known)",
    "unreachable": "its relay cannot be reached",
    ERR_TIMEOUT: "it did not answer in time",
    ERR_BUSY: "another remote session is in progress on it",
    ERR_CONFLICT: "it already has this request",
    BAD_ANSWER: "its answer was not understood",
}

END_REASONS: dict[str, str] = {
    EndReason.BY_CUSTOMER: "the customer ended it at the device",
    EndReason.BY_PORTAL: "it was ended from the portal",
    EndReason.BY_ENGINEER: "it was ended from the portal",
    EndReason.VIEWER_LEFT: "the viewer disconnected",
    EndReason.ACCESS_WITHDRAWN: "the access to it was withdrawn",
    EndReason.NOT_JOINED: "nobody joined it in time",
    EndReason.DEVICE_DISCONNECTED: "the device disconnected",
    EndReason.CHANNEL_RESET: "the connection to the device was lost",
    EndReason.MAX_LENGTH: "it reached its maximum length",
    EndReason.IDLE_TIMEOUT: "it was idle too long",
    EndReason.INDICATOR_LOST: "the device could not show its session indicator",
    EndReason.STREAM_FAILED: "the device could not stream its screen",
    EndReason.VIEWER_PROTOCOL_ERROR: "the viewer sent something the device did not accept",
    EndReason.AGENT_STOPPING: "the device's agent stopped",
}


def describe_by(by: str | None) -> str:
    if not by:
        return ""
    if by == BY_DEVICE:
        return "at the device"
    if by == BY_POLICY:
        return "automatically (this device does not ask for consent)"
    if by.startswith(BY_SITE_CONTACT):
        return f"by site contact {by.removeprefix(BY_SITE_CONTACT)}"
    return f"({by})"


def describe(row: DesktopSession) -> str:
    """The sentence the engineer reads for the session's state."""
    state = State(row.state)
    reason = row.end_reason or ""
    if state is State.FAILED:
        reason = FAILURES.get(reason, reason or "unknown error")
    elif state is State.ENDED:
        reason = END_REASONS.get(reason, reason or "unknown reason")
    elif state is State.TIMEOUT and row.decided_by == desktop.BY_SERVER_TIMEOUT:
        return "The device did not report a decision in time: the request was declined."
    return STATE_TEXT[state].format(by=describe_by(row.decided_by), reason=reason)


def seconds_left(row: DesktopSession, now: datetime) -> int | None:
    """Countdown of an undecided request (the device's own timeout, not the grace)."""
    if row.state not in desktop.UNDECIDED:
        return None
    left = (row.decision_deadline - desktop.DECISION_GRACE - now).total_seconds()
    return max(0, math.ceil(left))


def state_json(row: DesktopSession, now: datetime) -> dict[str, Any]:
    return {
        "session_id": row.id,
        "state": row.state,
        "mode": row.mode,
        "message": describe(row),
        "seconds_left": seconds_left(row, now),
        "final": row.state in desktop.FINAL,
        "joinable": row.state in desktop.JOINABLE,
        "decided_by": row.decided_by,
        "end_reason": row.end_reason,
        "consent_required": row.consent_required,
    }


def actor() -> Actor:
    user = current_user()
    return Actor(user.username, user.id, client_addr())


def own_session(device: Device, value: object) -> DesktopSession:
    """The current user's session ``value`` on ``device``, else 404 (others' look absent)."""
    try:
        row = db.session.get(DesktopSession, parse_session_id(value))
    except MessageError:
        abort(404)
    if row is None or row.device_id != device.id or row.user_id != current_user().id:
        abort(404)
    return row


def csp_with_viewer(view_url: str | None) -> str:
    """The page's CSP: ours, plus the relay's origin for the viewer's WebSocket."""
    if not view_url:
        return CSP
    parts = urlsplit(view_url)
    return CSP.replace("connect-src 'self'", f"connect-src 'self' {parts.scheme}://{parts.netloc}")


def _mode(value: str) -> Mode:
    try:
        return Mode(value or Mode.VIEW)
    except ValueError:
        abort(400)


# -- the engineer's pages ------------------------------------------------------------------


@bp.route("/devices/<device_id>/desktop")
@requires(Perm.DESKTOP_VIEW)
def page(device_id: str) -> ResponseReturnValue:
    """The request form, or (``?session=``) the live session with the viewer."""
    device = load_device(device_id)
    user = current_user()
    session_param = request.args.get("session")
    row = own_session(device, session_param) if session_param else None
    history = db.session.scalars(
        select(DesktopSession)
        .where(DesktopSession.device_id == device.id)
        .order_by(DesktopSession.requested_at.desc())
        .limit(HISTORY)
    ).all()
    view_url = relay_link().view_url(device.id) if row is not None else None
    body = render_template(
        "desktop/session.html" if row is not None else "desktop/request.html",
        device=device,
        session=row,
        history=history,
        describe=describe,
        policy=desktop.last_reported_policy(db.session, device.id),
        can_control=user.can(Perm.DESKTOP_CONTROL),
        max_reason=MAX_REASON,
        final=row is not None and row.state in desktop.FINAL,
        joinable=row is not None and row.state in desktop.JOINABLE,
    )
    response = current_app.make_response(body)
    response.headers["Content-Security-Policy"] = csp_with_viewer(view_url)
    return response


@bp.route("/devices/<device_id>/desktop", methods=["POST"])
@requires(Perm.DESKTOP_VIEW)
def request_session(device_id: str) -> Response:
    device = load_device(device_id)
    user = current_user()
    mode = _mode(request.form.get("mode", ""))
    reason = " ".join(request.form.get("reason", "").split())[:MAX_REASON]
    if desktop.viewer_rights(db.session, user.id, device.id, mode) is None:
        abort(403)
    now = datetime.now(UTC)
    row = desktop.create_session(
        db.session,
        device_id=device.id,
        user_id=user.id,
        username=user.username,
        mode=mode,
        reason=reason,
        consent_timeout_s=desktop.CONSENT_TIMEOUT_DEFAULT,
        now=now,
    )
    record(
        "desktop.requested",
        device_id=device.id,
        summary=f"{mode} desktop requested",
        details={"session_id": row.id, "mode": str(mode), "reason": reason},
    )
    db.session.commit()
    requester = Requester(
        user.username, user.display_name, current_app.config["OUTLINK"].organisation
    )
    answer, failure = relay_link().instruct(
        device.id, SessionRequest(row.id, mode, requester, reason).to_json()
    )
    _apply_request_answer(row.id, answer, failure)
    db.session.commit()
    return redirect(url_for("desktop.page", device_id=device.id, session=row.id))


def _apply_request_answer(session_id: str, answer: dict[str, Any] | None, failure: str) -> None:
    now = datetime.now(UTC)
    reply = _parse(RequestReply.parse, answer)
    if reply is not None and reply.state is State.PROMPTING:
        desktop.record_prompting(
            db.session,
            session_id,
            consent_timeout_s=math.ceil(reply.timeout_s),
            remote_consent_allowed=reply.remote_consent_allowed,
            now=now,
            actor=actor(),
        )
    elif reply is not None:
        desktop.record_decision(
            db.session,
            session_id,
            State.ACCEPTED,
            by=BY_POLICY,
            reason="consent is off on this device",
            now=now,
            actor=actor(),
        )
    else:
        log.info("! desktop request %s not delivered: %s", session_id, failure or BAD_ANSWER)
        desktop.record_failed(
            db.session, session_id, reason=failure or BAD_ANSWER, now=now, actor=actor()
        )


def _parse(parse: Callable[[object], T], answer: dict[str, Any] | None) -> T | None:
    """The device's answer as ``parse`` reads it; None when there is none or it does
    not parse (logged)."""
    if answer is None:
        return None
    try:
        return parse(answer)
    except MessageError as exc:
        log.warning("! the device's answer was not understood: %s", exc.message)
        return None


# -- the page's JSON -------------------------------------------------------------------------


@bp.route("/api/v1/devices/<device_id>/desktop")
@requires(Perm.DESKTOP_VIEW)
def state(device_id: str) -> ResponseReturnValue:
    """``?session=`` -> the state, a sentence for it and the countdown."""
    device = load_device(device_id)
    row = own_session(device, request.args.get("session"))
    now = datetime.now(UTC)
    if desktop.expire_if_overdue(db.session, row.id, now, actor()) is not None:
        db.session.commit()
        db.session.refresh(row)
    return jsonify(state_json(row, now))


@bp.route("/api/v1/devices/<device_id>/desktop/ticket", methods=["POST"])
@requires(Perm.DESKTOP_VIEW)
def ticket(device_id: str) -> ResponseReturnValue:
    """A single-use viewer ticket for the caller's accepted (or running) session."""
    device = load_device(device_id)
    user = current_user()
    row = own_session(device, _session_arg())
    if row.state not in desktop.JOINABLE:
        return jsonify(error="not_joinable", message=describe(row), state=row.state), 409
    rights = desktop.viewer_rights(db.session, user.id, device.id, Mode(row.mode))
    if rights is None:
        abort(403)
    view_url = relay_link().view_url(device.id)
    if view_url is None:
        return jsonify(error="no_relay", message="No relay is known for this device."), 503
    secret = desktop.issue_ticket(db.session, row, datetime.now(UTC))
    record(
        "desktop.ticket_issued",
        device_id=device.id,
        summary="viewer ticket issued for a desktop session",
        details={
            "session_id": row.id,
            "mode": row.mode,
            "clipboard": rights.clipboard,
            "ttl_s": int(desktop.TICKET_TTL.total_seconds()),
        },
    )
    db.session.commit()
    return jsonify(
        url=f"{view_url}?ticket={secret}",
        mode=row.mode,
        clipboard=rights.clipboard,
        expires_in=int(desktop.TICKET_TTL.total_seconds()),
    )


@bp.route("/api/v1/devices/<device_id>/desktop/end", methods=["POST"])
@requires(Perm.DESKTOP_VIEW)
def end(device_id: str) -> ResponseReturnValue:
    """End the caller's session (or withdraw the request); the device confirms."""
    device = load_device(device_id)
    row = own_session(device, _session_arg())
    if row.state in desktop.FINAL:
        return jsonify(state_json(row, datetime.now(UTC)))
    answer, failure = relay_link().instruct(device.id, EndRequest(row.id).to_json())
    record(
        "desktop.end_requested",
        outcome="success" if answer is not None else "failure",
        device_id=device.id,
        summary="the engineer ended the desktop session",
        details={"session_id": row.id, "error": failure or None},
    )
    if answer is None:  # the device cannot say so itself: record it here
        desktop.record_ended(
            db.session, row.id, reason=EndReason.BY_ENGINEER, now=datetime.now(UTC), actor=actor()
        )
    db.session.commit()
    db.session.refresh(row)
    return jsonify(state_json(row, datetime.now(UTC)))


def _session_arg() -> object:
    """The session id of a POST: JSON body or form field."""
    body = request.get_json(silent=True)
    if isinstance(body, dict):
        return body.get("session")
    return request.form.get("session")


# -- the site contact's answer ---------------------------------------------------------------


def waiting_requests(device: Device, now: datetime) -> list[DesktopSession]:
    rows = db.session.scalars(
        select(DesktopSession)
        .where(DesktopSession.device_id == device.id, DesktopSession.state == State.PROMPTING)
        .order_by(DesktopSession.requested_at)
    ).all()
    return [r for r in rows if r.decision_deadline > now]


def acting_in(row: DesktopSession | None) -> tuple[int, ...]:
    """Who acts for the vendor in request ``row`` (its requester), for the four-eyes rule;
    nobody when there is no request (may this user answer here at all?) or the
    requester's account is gone (their role no longer exists to check)."""
    return () if row is None or row.user_id is None else (row.user_id,)


@bp.route("/devices/<device_id>/desktop/consent")
@requires(Perm.DESKTOP_CONSENT)
def consent(device_id: str) -> str:
    """The requests waiting on this device, for those the four-eyes rule lets answer."""
    device = load_device(device_id)
    user = current_user()
    if not may_answer(db.session, user.id, device.id, acting=()).allowed:
        abort(403)
    now = datetime.now(UTC)
    answerable = [
        row
        for row in waiting_requests(device, now)
        if may_answer(db.session, user.id, device.id, acting=acting_in(row)).allowed
    ]
    return render_template(
        "desktop/consent.html",
        device=device,
        requests=answerable,
        seconds_left=lambda row: seconds_left(row, now),
        policy=desktop.last_reported_policy(db.session, device.id),
    )


@bp.route("/devices/<device_id>/desktop/consent", methods=["POST"])
@requires(Perm.DESKTOP_CONSENT)
def answer(device_id: str) -> Response:
    """Forward a site contact's answer once the four-eyes rule allows it (a refusal is
    audited with the caller's real role, and answered 403); the agent decides whether
    answers from the portal count on this device."""
    device = load_device(device_id)
    user = current_user()
    try:
        row = db.session.get(DesktopSession, parse_session_id(request.form.get("session")))
    except MessageError:
        row = None
    if row is not None and row.device_id != device.id:
        row = None
    # The rule first: whoever may not answer here is refused (and audited) whatever they sent.
    check = may_answer(db.session, user.id, device.id, acting=acting_in(row))
    if not check.allowed:
        record(
            "desktop.answer_refused",
            outcome="failure",
            device_id=device.id,
            summary=f"{check.role} {user.username} may not answer a desktop request here:"
            f" {check.refusal}",
            details={
                "session_id": None if row is None else row.id,
                "decision": tried if (tried := request.form.get("decision")) in DECISIONS else None,
                "role": check.role,
                "refusal": str(check.refusal),
                "engineer": None if row is None else row.username,
            },
        )
        db.session.commit()
        abort(403)
    try:
        decision = Decision(request.form.get("decision", ""))
    except ValueError:
        abort(400)
    if row is None:
        abort(400)
    answer = ConsentAnswer(row.id, decision, user.username, user.display_name)
    result, failure = relay_link().instruct(device.id, answer.to_json())
    reply = _parse(StateReply.parse, result)
    if result is not None and reply is None:
        failure = BAD_ANSWER
    record(
        "desktop.answered",
        outcome="success" if reply is not None else "failure",
        device_id=device.id,
        summary=f"{check.role} {user.username} answered a desktop request: {decision}",
        details={
            "session_id": row.id,
            "decision": str(decision),
            "role": check.role,
            "engineer": row.username,
            "error": failure or None,
        },
    )
    if reply is not None and reply.state in (State.ACCEPTED, State.DENIED):
        desktop.record_decision(
            db.session,
            row.id,
            reply.state,
            by=BY_SITE_CONTACT + user.username,
            reason=f"{reply.state} by a site contact",
            now=datetime.now(UTC),
            actor=actor(),
        )
    db.session.commit()
    if reply is not None:
        flash(f"Your answer was given to the device: {decision}.", "success")
    elif failure == ERR_FORBIDDEN:
        flash("This device only takes answers at the device itself.", "error")
    else:
        flash(f"The answer could not be given: {FAILURES.get(failure, failure)}.", "error")
    return redirect(url_for("desktop.consent", device_id=device.id))


# -- the device page's card --------------------------------------------------------------------


def device_card(device: Device) -> dict[str, Any]:
    """What the device page shows about remote desktop (``templates/desktop/card.html``)."""
    user = current_user()
    return {
        "policy": desktop.last_reported_policy(db.session, device.id),
        "waiting": len(waiting_requests(device, datetime.now(UTC))),
        "may_answer": user.can(Perm.DESKTOP_CONSENT)
        and may_answer(db.session, user.id, device.id, acting=()).allowed,
    }


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.jinja_env.globals.update(desktop_card=device_card)
