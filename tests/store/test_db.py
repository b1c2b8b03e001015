"""The store: migrations match the models, UTC handling, SQLite settings, transactions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError, StatementError

from store.db import import_models, make_engine, session_scope, upgrade, utcnow
from store.models import Base, Customer, Relay, Site

FLEET_TABLES = {
    "customers",
    "sites",
    "devices",
    "enrollment_tokens",
    "certificates",
    "presence",
    "relays",
}


def test_migrations_create_exactly_the_models(db_url: str, db_engine: Engine) -> None:
    """Migrations and models agree, for every table any store module defines."""
    import_models()
    assert {"telemetry_records", "telemetry_alarms"} <= set(Base.metadata.tables)  # subpackages
    upgrade(db_url)  # a second run is a no-op
    assert set(inspect(db_engine).get_table_names()) >= FLEET_TABLES
    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_sqlite_settings(tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    engine.dispose()


def test_in_memory_sqlite_is_one_database() -> None:
    url = "sqlite://"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    with session_scope(engine) as session:
        session.add(Customer(slug="acme", name="Acme"))
    with session_scope(engine) as session:
        assert session.scalars(select(Customer.slug)).all() == ["acme"]
    engine.dispose()


def test_datetimes_come_back_aware_utc(db_engine: Engine) -> None:
    paris = timezone(timedelta(hours=1))
    started = datetime(2030, 6, 1, 12, 30, 15, 123456, tzinfo=paris)
    with session_scope(db_engine) as session:
        session.add(
            Relay(relay_id="r1", service_url="wss://x", started_at=started, heartbeat_at=utcnow())
        )
    with session_scope(db_engine) as session:
        relay = session.get_one(Relay, "r1")
        assert relay.started_at == started
        assert relay.started_at.tzinfo is UTC
        assert relay.started_at.hour == 11
        # Comparisons in SQL use the same UTC representation.
        found = session.scalars(
            select(Relay.relay_id).where(Relay.started_at < started + timedelta(seconds=1))
        )
        assert found.all() == ["r1"]


def test_naive_datetimes_are_refused(db_engine: Engine) -> None:
    with pytest.raises(StatementError, match="naive datetime"), session_scope(db_engine) as session:
        session.add(
            Relay(
                relay_id="r1",
                service_url="x",
                started_at=datetime(2030, 1, 1),
                heartbeat_at=utcnow(),
            )
        )


def test_session_scope_rolls_back_on_error(db_engine: Engine) -> None:
    with pytest.raises(RuntimeError), session_scope(db_engine) as session:
        session.add(Customer(slug="acme", name="Acme"))
        session.flush()
        raise RuntimeError("abort")
    with session_scope(db_engine) as session:
        assert session.scalars(select(Customer)).all() == []


def test_foreign_keys_and_uniques_are_enforced(db_engine: Engine) -> None:
    with pytest.raises(IntegrityError), session_scope(db_engine) as session:
        session.add(Site(customer_id=999, slug="lab", name="Lab"))
    with session_scope(db_engine) as session:
        customer = Customer(slug="acme", name="Acme")
        session.add(customer)
        session.flush()
        session.add(Site(customer_id=customer.id, slug="lab", name="Lab"))
    with pytest.raises(IntegrityError), session_scope(db_engine) as session:
        customer_id = session.scalars(select(Customer.id)).one()
        session.add(Site(customer_id=customer_id, slug="lab", name="Lab again"))
