"""Engine, session and schema helpers for the shared database.

SQLite (development default) and PostgreSQL via psycopg 3 (production). The
engine is synchronous: asyncio code calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

import store

log = logging.getLogger(__name__)

#: How long a SQLite writer waits for the write lock before failing with "database is locked".
#: Writes are short (a token, a presence row), so a few seconds covers bursts of enrolments.
SQLITE_BUSY_TIMEOUT_MS = 5000

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: Modules of the store that define no tables and must not be imported as models.
_NOT_MODELS = ("store.migrations",)


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the only kind the store accepts)."""
    return datetime.now(UTC)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the settings Outlink relies on.

    SQLite gets WAL (readers never block the writer), foreign keys (off by
    default in SQLite) and a busy timeout; connections may be used from worker
    threads (``asyncio.to_thread``). ``postgresql://`` URLs use psycopg 3.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        connect_args: dict[str, Any] = kwargs.pop("connect_args", {})
        connect_args.setdefault("check_same_thread", False)
        if parsed.database in (None, "", ":memory:"):
            # An in-memory database lives in one connection; share it or every session is empty.
            kwargs.setdefault("poolclass", StaticPool)
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; durable at checkpoints
    finally:
        cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit (handy across threads)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session] | Engine) -> Iterator[Session]:
    """One unit of work: commit if the block succeeds, roll back if it raises."""
    if isinstance(factory, Engine):
        factory = make_sessionmaker(factory)
    with factory() as session, session.begin():
        yield session


def import_models() -> None:
    """Import every module of the store, subpackages included, so each table it defines
    is on ``store.models.Base.metadata`` (what Alembic autogenerate compares against)."""
    pending: list[tuple[Iterable[str], str]] = [(store.__path__, "store.")]
    while pending:
        path, prefix = pending.pop()
        for info in pkgutil.iter_modules(path, prefix):
            if info.name in _NOT_MODELS:
                continue
            module = importlib.import_module(info.name)
            if info.ispkg:
                pending.append((module.__path__, f"{info.name}."))


def alembic_config(url: str | None = None) -> Config:
    """Alembic configuration built in code, so the installed package carries its migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # Passed as an attribute, not an ini option: ConfigParser would mangle "%" in passwords.
        config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` (idempotent; cheap when already there)."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
    log.info("= database at %s upgraded to %s", make_url(url).render_as_string(), revision)
