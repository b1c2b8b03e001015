"""Alembic environment: runs on a connection handed in by ``store.db.upgrade`` or on a URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from store.db import import_models, make_engine
from store.models import Base

# Every module of the store may define tables on Base (fleet: models, portal: portal,
# telemetry: one module per aggregate); import them all so autogenerate sees the whole
# schema without this file listing them.
import_models()

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER needs table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Use the caller's connection if given, else connect to the configured URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: use store.db.upgrade(url) or set sqlalchemy.url")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
