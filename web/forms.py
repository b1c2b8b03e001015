"""The portal's forms (Flask-WTF: every one carries the session-bound CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm as _FlaskForm
from wtforms import (
    BooleanField,
    IntegerField,
    PasswordField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional, Regexp

from store.portal import USERNAME_MAX
from store.telemetry.rules import MAX_RULE_NAME
from telemetry.rules import MAX_RULE_LENGTH
from web.inputs import db_id
from web.passwords import MAX_LENGTH


class FlaskForm(_FlaskForm):  # type: ignore[misc]  # Flask-WTF ships no type hints
    """The base of every portal form: Flask-WTF's, with its session-bound CSRF token."""


USERNAME_RE = r"^[a-z0-9][a-z0-9._-]*$"


class ActionForm(FlaskForm):
    """A button that changes something: the form exists for its CSRF token."""


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=USERNAME_MAX)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=MAX_LENGTH)])


class TotpForm(FlaskForm):
    code = StringField(
        "Authentication code",
        # Six digits from the app, or a recovery code (``web.recovery``: XXXXX-XXXXX).
        validators=[
            DataRequired(),
            Regexp(
                r"^\s*(\d{6}|[A-Za-z2-7]{5}[- ]?[A-Za-z2-7]{5})\s*$",
                message="Six digits, or a recovery code",
            ),
        ],
    )


class PasswordChangeForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired(), Length(max=MAX_LENGTH)])
    new = PasswordField("New password", validators=[DataRequired(), Length(max=MAX_LENGTH)])
    confirm = PasswordField(
        "Repeat new password", validators=[DataRequired(), Length(max=MAX_LENGTH)]
    )


class UserForm(FlaskForm):
    """Create (username editable) or edit a user: role and scopes."""

    username = StringField(
        "Username",
        validators=[
            DataRequired(),
            Length(min=2, max=USERNAME_MAX),
            Regexp(USERNAME_RE, message="Lowercase letters, digits, '.', '_' and '-'"),
        ],
    )
    display_name = StringField("Display name", validators=[Optional(), Length(max=200)])
    role = SelectField("Role", validators=[DataRequired()])
    all_scope = BooleanField("All customers (global scope)")
    customers = SelectMultipleField("Customers", coerce=db_id, validate_choice=False)
    sites = SelectMultipleField("Sites", coerce=db_id, validate_choice=False)
    devices = TextAreaField("Device ids (one per line)", validators=[Length(max=20000)])


class TokenForm(FlaskForm):
    site = SelectField("Site", coerce=db_id, validate_choice=False)
    hours = IntegerField(
        "Valid for (hours)", default=1, validators=[DataRequired(), NumberRange(min=1, max=168)]
    )
    note = StringField("Note", validators=[Optional(), Length(max=200)])


class RevokeForm(FlaskForm):
    reason = StringField("Reason", validators=[DataRequired(), Length(max=500)])


class RuleForm(FlaskForm):
    """An alarm/notification rule: its name and one line of the rule language."""

    name = StringField("Name", validators=[DataRequired(), Length(max=MAX_RULE_NAME)])
    text = TextAreaField("Rule", validators=[DataRequired(), Length(max=MAX_RULE_LENGTH)])
    enabled = BooleanField("Enabled", default=True)


class LogUploadForm(FlaskForm):
    """Ask a device for its logs: a configured log set by name, or one configured file."""

    source = StringField(
        "Log set",
        validators=[
            Optional(),
            Length(max=32),
            Regexp(r"^[a-z0-9][a-z0-9_-]*$", message="A configured name like app"),
        ],
    )
    path = StringField("Or one file", validators=[Optional(), Length(max=1024)])
