"""A device's telemetry in the portal: charts of its history, latest values, events, and
the fleet page of devices that need attention now."""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("telemetry", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
