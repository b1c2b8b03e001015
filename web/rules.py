"""The rules editor and the notifications log (R5, R8).

A rule is one line of the language in :mod:`telemetry.rules` (*when* ... *on* ...
*then* ...). It is validated when it is saved: a rule with bad syntax is refused with
the parser's message (what and at which column), the form kept as typed and the answer
HTTP 400, so nothing half-understood ever reaches a relay. Relays pick saved rules up
within seconds (``rules_refresh``).

Rules apply across the whole fleet (a rule's scope is part of its text, not the
author's), so editing them is its own permission, ``rules.manage``, granted to
administrators only by default. The notifications log (every e-mail and webhook
decided: sent, failed, duplicate, rate-limited) names targets and devices fleet-wide,
so it needs the same permission. Every change is audited with the rule's text.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from store.telemetry.notifications import list_notifications
from store.telemetry.rules import TelemetryRule, create_rule, delete_rule, list_rules, update_rule
from telemetry.rules import RuleSyntaxError
from web.authz import Perm, current_user, requires
from web.db import db
from web.forms import ActionForm, RuleForm
from web.recorder import record

bp = Blueprint("rules", __name__)

#: Notifications the log shows (newest first).
NOTIFICATIONS_SHOWN = 200

#: Shown next to the form: the grammar in brief, and examples that parse.
EXAMPLES = (
    "when code E9* then alarm urgent, email service@vendor.example",
    "when metric disk.percent:/ >= 95 on customer acme then alarm urgent",
    "when rate code E2* >= 5 in 10m then alarm warning, priority urgent",
    'when offline > 10m on model "CT 9000" then alarm, webhook ops',
    "when code E4012 on site acme/radiology then alarm, fetch logs app",
)


@bp.route("/rules")
@requires(Perm.RULES_MANAGE)
def rules() -> str:
    return render_template(
        "rules/list.html", rules=list_rules(db.session), delete_form=ActionForm()
    )


def _load(rule_id: int) -> TelemetryRule:
    rule = db.session.get(TelemetryRule, rule_id)
    if rule is None:
        abort(404)
    return rule


def _form_page(
    form: RuleForm, rule: TelemetryRule | None, error: RuleSyntaxError | ValueError | None = None
) -> ResponseReturnValue:
    body = render_template(
        "rules/form.html",
        form=form,
        rule=rule,
        error=error,
        column=getattr(error, "column", None),
        examples=EXAMPLES,
    )
    return body, 400 if error is not None or form.errors else 200


def _audit(kind: str, rule: TelemetryRule, summary: str) -> None:
    record(
        kind,
        summary=summary,
        details={"rule_id": rule.id, "name": rule.name, "text": rule.text, "enabled": rule.enabled},
    )


@bp.route("/rules/new", methods=["GET", "POST"])
@requires(Perm.RULES_MANAGE)
def new() -> ResponseReturnValue:
    form = RuleForm()
    if not form.validate_on_submit():
        return _form_page(form, None)
    try:
        rule = create_rule(
            db.session,
            name=form.name.data,
            text=form.text.data,
            enabled=form.enabled.data,
            actor=current_user().username,
        )
    except ValueError as exc:  # RuleSyntaxError says where and what
        db.session.rollback()
        return _form_page(form, None, exc)
    _audit("telemetry.rule_create", rule, f"rule {rule.name!r} created")
    db.session.commit()
    flash(f"Rule {rule.name!r} saved. Relays apply it within seconds.", "success")
    return redirect(url_for("rules.rules"))


@bp.route("/rules/<int:rule_id>", methods=["GET", "POST"])
@requires(Perm.RULES_MANAGE)
def edit(rule_id: int) -> ResponseReturnValue:
    rule = _load(rule_id)
    form = RuleForm(obj=rule)
    if not form.validate_on_submit():
        return _form_page(form, rule)
    try:
        update_rule(
            db.session,
            rule,
            name=form.name.data,
            text=form.text.data,
            enabled=form.enabled.data,
            actor=current_user().username,
        )
    except ValueError as exc:
        db.session.rollback()
        return _form_page(form, _load(rule_id), exc)
    _audit("telemetry.rule_update", rule, f"rule {rule.name!r} changed")
    db.session.commit()
    flash(f"Rule {rule.name!r} saved. Relays apply it within seconds.", "success")
    return redirect(url_for("rules.rules"))


@bp.route("/rules/<int:rule_id>/delete", methods=["POST"])
@requires(Perm.RULES_MANAGE)
def delete(rule_id: int) -> Response:
    rule = _load(rule_id)
    _audit("telemetry.rule_delete", rule, f"rule {rule.name!r} deleted")
    delete_rule(db.session, rule)
    db.session.commit()
    flash(f"Rule {rule.name!r} deleted; the alarms it opened stay.", "success")
    return redirect(url_for("rules.rules"))


@bp.route("/rules/notifications")
@requires(Perm.RULES_MANAGE)
def notifications() -> str:
    return render_template(
        "rules/notifications.html", rows=list_notifications(db.session, limit=NOTIFICATIONS_SHOWN)
    )
