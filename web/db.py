"""The portal's database handle: one engine per app, one SQLAlchemy session per request.

Views use ``db.session`` and commit explicitly; whatever a request leaves
uncommitted is rolled back at teardown, so an error half-way never stores half a
change. A database that cannot be reached gives a 503 page (see ``web.errors``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from store.db import make_engine, make_sessionmaker

#: Errors that mean "the database is not reachable right now", not "our bug".
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
)
#: Fail fast when PostgreSQL is down: a browser waiting 30 s helps nobody.
PG_CONNECT_TIMEOUT_S = 3


class Database:
    """Flask extension: ``db.init_app(app)``, then ``db.session`` inside a request."""

    def init_app(self, app: Flask, url: str, **engine_kwargs: Any) -> None:
        if url.startswith("postgresql"):
            engine_kwargs.setdefault("connect_args", {"connect_timeout": PG_CONNECT_TIMEOUT_S})
        engine = make_engine(url, **engine_kwargs)
        app.extensions["outlink_db"] = (engine, make_sessionmaker(engine))
        app.teardown_appcontext(self._close)

    @property
    def engine(self) -> Engine:
        engine: Engine = current_app.extensions["outlink_db"][0]
        return engine

    @property
    def factory(self) -> sessionmaker[Session]:
        factory: sessionmaker[Session] = current_app.extensions["outlink_db"][1]
        return factory

    @property
    def session(self) -> Session:
        """This request's session (created on first use)."""
        if "db_session" not in g:
            g.db_session = self.factory()
        session: Session = g.db_session
        return session

    @staticmethod
    def _close(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            session.close()  # rolls back anything not committed


db = Database()
