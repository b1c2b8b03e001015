"""Alarms in the portal: the list, acknowledge, comment and close."""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("alarms", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
