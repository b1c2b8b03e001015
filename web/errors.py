"""Error pages: a clear message and the status, never a stack trace or an exception text.

A database that cannot be reached is a 503 ("try again shortly"), and whatever
the failed request had started is rolled back first.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify, render_template
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

from web.authz import wants_json
from web.db import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

MESSAGES = {
    400: ("Bad request", "The request could not be understood."),
    401: ("Sign-in required", "Please sign in to continue."),
    403: ("Not allowed", "Your account does not have permission for this."),
    404: ("Not found", "There is nothing here, or you do not have access to it."),
    405: ("Method not allowed", "This address does not accept that kind of request."),
    413: ("Too large", "The request was larger than the portal accepts."),
    429: ("Too many requests", "Please wait a moment and try again."),
    500: ("Something went wrong", "The error was logged. Please try again."),
    503: (
        "Temporarily unavailable",
        "The portal cannot reach its database right now. "
        "Nothing was changed; please try again in a moment.",
    ),
}


def _rollback() -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


def render_error(code: int, detail: str | None = None) -> tuple[Response | str, int]:
    title, message = MESSAGES.get(code, MESSAGES[500])
    if wants_json():
        return jsonify(error=title.lower().replace(" ", "_"), message=detail or message), code
    return render_template("error.html", code=code, title=title, message=detail or message), code


def _http_error(exc: HTTPException) -> tuple[Response | str, int]:
    code = exc.code or 500
    if code >= 500:
        _rollback()
    return render_error(code)


def _csrf_error(_exc: CSRFError) -> tuple[Response | str, int]:
    _rollback()
    return render_error(
        400, "The form was stale or did not come from this site. Reload the page and try again."
    )


def _unavailable(exc: Exception) -> tuple[Response | str, int]:
    _rollback()
    log.error("! database unavailable: %s", type(exc).__name__)
    return render_error(503)


def _internal(exc: InternalServerError) -> tuple[Response | str, int]:
    original = exc.original_exception
    _rollback()
    if isinstance(original, UNAVAILABLE_ERRORS):
        log.error("! database unavailable: %s", type(original).__name__)
        return render_error(503)
    return render_error(500)


def init_app(app: Flask) -> None:
    app.register_error_handler(CSRFError, _csrf_error)
    for error in UNAVAILABLE_ERRORS:
        app.register_error_handler(error, _unavailable)
    app.register_error_handler(ServiceUnavailable, _unavailable)
    app.register_error_handler(InternalServerError, _internal)
    app.register_error_handler(HTTPException, _http_error)
