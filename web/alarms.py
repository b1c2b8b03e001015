"""Alarms in the portal: the list, an alarm with its comments, acknowledge, comment, close.

Alarms open on the relay (urgent codes, rules; :mod:`store.telemetry.alarms`); here engineers
handle them. Seeing alarms needs ``telemetry.view``; changing one needs
``alarms.handle``. Scope as everywhere: an alarm of a device out of the user's scope
answers 404, like one that does not exist. Every change is recorded in the audit trail
in the same transaction; a transition the alarm's state does not allow (acknowledging a
closed alarm, say, after someone else closed it) is a message, not an error page.

This module's ``init_app`` also registers the rules editor (:mod:`web.rules`) and log
uploads (:mod:`web.uploads`), and the ``device_alarms`` template global behind the
device page's alarms-and-logs section.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response

from store.fleet import hostnames
from store.models import Device
from store.telemetry.alarms import (
    ACTIVE_STATES,
    ALARM_ACKNOWLEDGED,
    ALARM_CLOSED,
    ALARM_OPEN,
    MAX_COMMENT,
    AlarmStateError,
    TelemetryAlarm,
    acknowledge_alarm,
    alarm_comments,
    close_alarm,
    comment_alarm,
    list_alarms,
)
from store.telemetry.notifications import list_notifications
from store.telemetry.uploads import list_log_uploads
from telemetry.records import Severity
from web.authz import Perm, current_user, requires
from web.db import db
from web.fleet import load_device
from web.paging import page_number
from web.recorder import record
from web.scope import current_scope

log = logging.getLogger(__name__)

bp = Blueprint("alarms", __name__)

#: The list's state filter: its value -> the alarm states it shows.
STATE_FILTERS: dict[str, tuple[str, ...]] = {
    "active": ACTIVE_STATES,
    ALARM_OPEN: (ALARM_OPEN,),
    ALARM_ACKNOWLEDGED: (ALARM_ACKNOWLEDGED,),
    ALARM_CLOSED: (ALARM_CLOSED,),
}
#: Open alarms and uploads the device page shows (the full lists are a click away).
DEVICE_SECTION_ROWS = 10
#: Notifications shown on an alarm's page.
ALARM_NOTIFICATIONS = 50


def _severity_arg() -> Severity:
    try:
        return Severity.parse(request.args.get("severity", "") or "routine")
    except ValueError:
        return Severity.ROUTINE


@bp.route("/alarms")
@requires(Perm.TELEMETRY_VIEW)
def alarms() -> str:
    """Alarms of the user's devices, most severe and newest first."""
    state = request.args.get("state", "active")
    if state not in STATE_FILTERS:
        state = "active"
    severity = _severity_arg()
    size = current_app.config["OUTLINK"].page_size
    number = page_number()
    rows = list_alarms(
        db.session,
        devices=current_scope().devices(),
        states=STATE_FILTERS[state],
        min_severity=severity,
        limit=size + 1,
        offset=(number - 1) * size,
    )
    more = len(rows) > size
    rows = rows[:size]
    return render_template(
        "alarms/list.html",
        rows=rows,
        state=state,
        severity=severity,
        states=list(STATE_FILTERS),
        severities=list(Severity),
        hostnames=_hostnames(r.alarm.device_id for r in rows),
        number=number,
        more=more,
    )


def _hostnames(device_ids: Any) -> dict[str, str | None]:
    return hostnames(db.session, sorted(set(device_ids)))


def load_alarm(alarm_id: int) -> tuple[TelemetryAlarm, Device]:
    """The alarm and its device, or 404 if either is absent or out of scope."""
    alarm = db.session.get(TelemetryAlarm, alarm_id)
    if alarm is None:
        abort(404)
    return alarm, load_device(alarm.device_id)


@bp.route("/alarms/<int:alarm_id>")
@requires(Perm.TELEMETRY_VIEW)
def alarm(alarm_id: int) -> str:
    """The alarm, its comments and, for those who handle alarms, who was notified (the
    vendor's addresses are not for every viewer: site contacts see alarms too)."""
    row, device = load_alarm(alarm_id)
    can_handle = current_user().can(Perm.ALARMS_HANDLE)
    notifications = (
        list_notifications(db.session, alarm_id=row.id, limit=ALARM_NOTIFICATIONS)
        if can_handle
        else None
    )
    return render_template(
        "alarms/alarm.html",
        alarm=row,
        device=device,
        comments=alarm_comments(db.session, row.id),
        notifications=notifications,
        can_handle=can_handle,
        max_comment=MAX_COMMENT,
    )


def _audit(kind: str, alarm: TelemetryAlarm, device: Device, summary: str, **details: Any) -> None:
    record(
        kind,
        device_id=device.id,
        customer_id=device.customer_id,
        site_id=device.site_id,
        summary=summary,
        details={"alarm_id": alarm.id, "key": alarm.key, **details},
    )


def _back(alarm: TelemetryAlarm) -> Response:
    return redirect(url_for("alarms.alarm", alarm_id=alarm.id))


@bp.route("/alarms/<int:alarm_id>/acknowledge", methods=["POST"])
@requires(Perm.ALARMS_HANDLE)
def acknowledge(alarm_id: int) -> Response:
    row, device = load_alarm(alarm_id)
    try:
        acknowledge_alarm(db.session, row, actor=current_user().username)
    except AlarmStateError as exc:
        flash(f"Not acknowledged: {exc}.", "error")
        return _back(row)
    _audit("telemetry.alarm_ack", row, device, f"alarm {row.id} acknowledged: {row.title}")
    db.session.commit()
    flash("Alarm acknowledged: others see that you are on it.", "success")
    return _back(row)


def _comment_text() -> str:
    return request.form.get("text", "").strip()


@bp.route("/alarms/<int:alarm_id>/comment", methods=["POST"])
@requires(Perm.ALARMS_HANDLE)
def comment(alarm_id: int) -> Response:
    row, device = load_alarm(alarm_id)
    try:
        comment_alarm(db.session, row, actor=current_user().username, text=_comment_text())
    except ValueError as exc:
        db.session.rollback()
        flash(f"No comment added: {exc}.", "error")
        return _back(row)
    _audit("telemetry.alarm_comment", row, device, f"comment on alarm {row.id}")
    db.session.commit()
    flash("Comment added.", "success")
    return _back(row)


@bp.route("/alarms/<int:alarm_id>/close", methods=["POST"])
@requires(Perm.ALARMS_HANDLE)
def close(alarm_id: int) -> Response:
    """Close, with an optional closing note (stored as a comment first)."""
    row, device = load_alarm(alarm_id)
    actor, note = current_user().username, _comment_text()
    try:
        if note:
            comment_alarm(db.session, row, actor=actor, text=note)
        close_alarm(db.session, row, actor=actor)
    except ValueError as exc:  # AlarmStateError, or a note that is too long
        db.session.rollback()
        flash(f"Not closed: {exc}.", "error")
        return _back(row)
    if note:
        _audit("telemetry.alarm_comment", row, device, f"comment on alarm {row.id}")
    _audit("telemetry.alarm_close", row, device, f"alarm {row.id} closed: {row.title}")
    db.session.commit()
    flash("Alarm closed. If the problem comes back, a new alarm opens.", "success")
    return _back(row)


def device_alarms(device: Device) -> dict[str, Any]:
    """What the device page's alarms-and-logs section shows to the current user."""
    user = current_user()
    section: dict[str, Any] = {
        "alarms": None,
        "uploads": None,
        "can_download": current_app.config["OUTLINK"].upload_dir is not None,
    }
    if user.can(Perm.TELEMETRY_VIEW):
        section["alarms"] = list_alarms(db.session, device_id=device.id, limit=DEVICE_SECTION_ROWS)
    if user.can(Perm.FILES_VIEW):
        section["uploads"] = list_log_uploads(db.session, device.id, limit=DEVICE_SECTION_ROWS)
    return section


def init_app(app: Flask) -> None:
    from web import rules, uploads

    app.register_blueprint(bp)
    app.register_blueprint(rules.bp)
    app.register_blueprint(uploads.bp)
    app.jinja_env.globals.update(device_alarms=device_alarms, upload_state=uploads.describe)
