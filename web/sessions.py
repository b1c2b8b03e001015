"""Server-side sessions: the cookie carries only a random token; everything else is a DB row.

Flask's default session is a signed cookie, which cannot be revoked. Here the
row *is* the session: delete it and the browser is logged out on its next
request (logout, logout everywhere, password change, a disabled account). The
table stores SHA-256 of the token, so reading the table does not let anyone
ride a session. Idle timeout and absolute lifetime are checked on every load.

Anonymous visitors get a row only once something is stored for them (the CSRF
token of the login form, a flashed message); such rows live at most
``ANONYMOUS_LIFETIME`` and are purged at each login.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Request, Response, current_app
from flask.sessions import SessionInterface, SessionMixin
from sqlalchemy import delete, or_, update
from werkzeug.datastructures import CallbackDict

from store.portal import WebSession
from web.db import UNAVAILABLE_ERRORS, db

log = logging.getLogger(__name__)

#: Secure + no Domain + Path=/ : the browser refuses the cookie from anything but this origin.
COOKIE_NAME = "__Host-outlink-session"
#: 32 random bytes (256 bits): unguessable.
TOKEN_BYTES = 32
#: A pre-login session only carries a form's CSRF token; an hour is ample to type a password.
ANONYMOUS_LIFETIME = timedelta(hours=1)
#: ``last_seen_at`` is rewritten at most this often: idle timeouts are minutes, not seconds,
#: and a write per page view would make every read a write.
TOUCH_INTERVAL = timedelta(seconds=60)
#: Session data is a CSRF token, a few flashes and a pending TOTP step: small.
MAX_DATA_BYTES = 16384


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """The session dict of one request plus what it knows about its row."""

    def __init__(
        self,
        initial: dict[str, Any] | None = None,
        *,
        row_id: str | None = None,
        user_id: int | None = None,
        auth_method: str | None = None,
        last_seen_at: datetime | None = None,
        unavailable: bool = False,
    ) -> None:
        def on_update(s: ServerSession) -> None:
            s.modified = True

        super().__init__(initial, on_update)
        self.row_id = row_id
        self.user_id = user_id
        self.auth_method = auth_method
        self.last_seen_at = last_seen_at
        #: The database could not be read; the guard answers 503.
        self.unavailable = unavailable
        #: A fresh token to send (new row, or rotated at login).
        self.new_token: str | None = None
        self.ended = False
        self.modified = False
        self.new = row_id is None


class ServerSessionInterface(SessionInterface):
    """Flask ``SessionInterface`` over the ``web_sessions`` table."""

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        token = request.cookies.get(COOKIE_NAME)
        if not token or len(token) > 2 * TOKEN_BYTES:
            return ServerSession()
        try:
            with db.factory() as store:
                row = store.get(WebSession, _hash(token))
                if row is None:
                    return ServerSession()
                now = datetime.now(UTC)
                if row.expires_at <= now or row.last_seen_at + _idle_timeout(app) <= now:
                    store.delete(row)
                    store.commit()
                    log.info("= session of user %s expired", row.user_id)
                    return ServerSession()
                data = json.loads(row.data)
        except UNAVAILABLE_ERRORS:
            log.exception("! session store unavailable")
            return ServerSession(unavailable=True)
        return ServerSession(
            data,
            row_id=row.id,
            user_id=row.user_id,
            auth_method=row.auth_method,
            last_seen_at=row.last_seen_at,
        )

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)
        if session.unavailable:
            return
        cookie = {
            "domain": None,
            "path": "/",
            "secure": True,
            "httponly": True,
            "samesite": app.config.get("SESSION_COOKIE_SAMESITE", "Strict"),
        }
        if session.ended:
            response.delete_cookie(COOKIE_NAME, **cookie)
            return
        now = datetime.now(UTC)
        values: dict[str, Any]
        if session.row_id is None:
            if not session.modified or not dict(session):
                return
        elif session.modified:
            values = {"data": _dump(session), "last_seen_at": now}
        elif session.last_seen_at is None or now - session.last_seen_at >= TOUCH_INTERVAL:
            values = {"last_seen_at": now}
        else:
            return
        # Its own transaction: the request's may hold abandoned work that must not commit.
        try:
            with db.factory() as store, store.begin():
                if session.row_id is None:
                    token = secrets.token_urlsafe(TOKEN_BYTES)
                    store.add(
                        WebSession(
                            id=_hash(token),
                            user_id=None,
                            data=_dump(session),
                            created_at=now,
                            last_seen_at=now,
                            expires_at=now + ANONYMOUS_LIFETIME,
                        )
                    )
                    session.new_token = token
                else:
                    store.execute(
                        update(WebSession).where(WebSession.id == session.row_id).values(**values)
                    )
        except UNAVAILABLE_ERRORS:
            log.exception("! could not save session")
            return
        if session.new_token is not None:
            response.set_cookie(COOKIE_NAME, session.new_token, **cookie)
        response.vary.add("Cookie")


def _dump(session: ServerSession) -> str:
    text = json.dumps(dict(session), separators=(",", ":"))
    if len(text) > MAX_DATA_BYTES:
        raise ValueError("session data too large")
    return text


def _idle_timeout(app: Flask) -> timedelta:
    return timedelta(minutes=app.config["OUTLINK"].session_idle_minutes)


def begin_authenticated(
    session: ServerSession,
    user_id: int,
    auth_method: str,
    source: str | None,
    user_agent: str | None,
) -> None:
    """Log ``user_id`` in: replace the current row by a fresh one (new token: no fixation).

    Runs in the request's DB transaction; the caller commits it with its audit event.
    """
    config = current_app.config["OUTLINK"]
    now = datetime.now(UTC)
    if session.row_id is not None:
        db.session.execute(delete(WebSession).where(WebSession.id == session.row_id))
    purge_expired(now)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session.clear()
    row = WebSession(
        id=_hash(token),
        user_id=user_id,
        data="{}",
        auth_method=auth_method,
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(hours=config.session_absolute_hours),
        source=source,
        user_agent=(user_agent or "")[:300],
    )
    db.session.add(row)
    session.row_id, session.user_id, session.auth_method = row.id, user_id, auth_method
    session.last_seen_at, session.new_token, session.modified = now, token, True


def end_current(session: ServerSession) -> None:
    """Log out this browser (the row goes; the cookie is cleared)."""
    if session.row_id is not None:
        db.session.execute(delete(WebSession).where(WebSession.id == session.row_id))
    session.clear()
    session.row_id, session.user_id, session.ended = None, None, True


def end_all_for_user(user_id: int, *, keep: str | None = None) -> int:
    """End every session of ``user_id`` (except ``keep``); return how many ended."""
    stmt = delete(WebSession).where(WebSession.user_id == user_id)
    if keep is not None:
        stmt = stmt.where(WebSession.id != keep)
    return int(db.session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]


def purge_expired(now: datetime) -> None:
    """Delete rows past their absolute lifetime or idle timeout."""
    idle = _idle_timeout(current_app)
    db.session.execute(
        delete(WebSession).where(
            or_(WebSession.expires_at <= now, WebSession.last_seen_at <= now - idle)
        )
    )
