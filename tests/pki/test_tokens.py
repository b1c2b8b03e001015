"""Enrolment tokens: once, before expiry, never stored in clear, safe under concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, text

from pki.fleet import ensure_site
from pki.tokens import (
    MAX_TTL,
    TOKEN_PREFIX,
    TokenGrant,
    consume_token,
    create_token,
    hash_secret,
    list_tokens,
    revoke_token,
)
from store.db import make_sessionmaker, session_scope
from store.models import EnrollmentToken
from tests.conftest import UNIT

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def make(engine: Engine, ttl: timedelta = timedelta(hours=1), now: datetime = T0) -> str:
    with session_scope(engine) as session:
        site = ensure_site(session, "acme", "lab", customer_name="Acme Hospitals")
        return create_token(session, site, ttl=ttl, now=now, created_by="alice").secret


def consume(engine: Engine, secret: str, now: datetime = T0) -> TokenGrant | None:
    with session_scope(engine) as session:
        return consume_token(session, secret, now=now)


def test_secret_format_and_only_hash_stored(db_engine: Engine) -> None:
    secret = make(db_engine)
    assert secret.startswith(TOKEN_PREFIX) and len(secret) >= len(TOKEN_PREFIX) + 43
    with session_scope(db_engine) as session:
        row = session.scalars(select(EnrollmentToken)).one()
        assert row.token_hash == hash_secret(secret)
        dump = " ".join(
            str(v) for v in session.execute(text("SELECT * FROM enrollment_tokens")).one()
        )
    assert secret not in dump and secret[len(TOKEN_PREFIX) :] not in dump


def test_token_works_once(db_engine: Engine) -> None:
    secret = make(db_engine)
    grant = consume(db_engine, secret)
    assert grant is not None
    assert consume(db_engine, secret) is None
    with session_scope(db_engine) as session:
        (info,) = list_tokens(session)
    assert info.state(T0) == "used" and info.used_at == T0
    assert (info.customer, info.site, info.created_by) == ("acme", "lab", "alice")


def test_token_works_only_before_expiry(db_engine: Engine) -> None:
    secret = make(db_engine, ttl=timedelta(minutes=10))
    assert consume(db_engine, secret, T0 + timedelta(minutes=10)) is None
    assert consume(db_engine, secret, T0 + timedelta(minutes=11)) is None
    assert consume(db_engine, secret, T0 + timedelta(minutes=9, seconds=59)) is not None


def test_rollback_gives_the_token_back(db_engine: Engine) -> None:
    secret = make(db_engine)
    with pytest.raises(RuntimeError), session_scope(db_engine) as session:
        assert consume_token(session, secret, now=T0) is not None
        raise RuntimeError("enrolment failed later")
    assert consume(db_engine, secret) is not None


def test_revoked_token_is_refused(db_engine: Engine) -> None:
    secret = make(db_engine)
    with session_scope(db_engine) as session:
        token_id = session.scalars(select(EnrollmentToken.id)).one()
        assert revoke_token(session, token_id, now=T0)
        assert not revoke_token(session, token_id, now=T0)  # already revoked
        assert not revoke_token(session, 9999)
    assert consume(db_engine, secret) is None
    with session_scope(db_engine) as session:
        assert list_tokens(session)[0].state(T0) == "revoked"


def test_used_token_cannot_be_revoked(db_engine: Engine) -> None:
    secret = make(db_engine)
    assert consume(db_engine, secret) is not None
    with session_scope(db_engine) as session:
        assert not revoke_token(session, session.scalars(select(EnrollmentToken.id)).one())


@pytest.mark.parametrize("secret", ["", "olk_", "nope", "olk_" + "a" * 500, "OLK_abc"])
def test_garbage_secrets(db_engine: Engine, secret: str) -> None:
    make(db_engine)
    assert consume(db_engine, secret) is None


def test_ttl_bounds(db_engine: Engine) -> None:
    for ttl in (timedelta(0), timedelta(seconds=-1), MAX_TTL + timedelta(seconds=1)):
        with pytest.raises(ValueError), session_scope(db_engine) as session:
            create_token(session, ensure_site(session, "acme", "lab"), ttl=ttl)


def test_concurrent_consumers_exactly_one_wins(db_engine: Engine) -> None:
    """Many threads, each with its own connection, race for one token."""
    racers = 8
    secret = make(db_engine)
    factory = make_sessionmaker(db_engine)
    start = threading.Barrier(racers, timeout=10 * UNIT)

    def race(_: int) -> bool:
        start.wait()
        with session_scope(factory) as session:
            return consume_token(session, secret, now=T0) is not None

    with ThreadPoolExecutor(racers) as pool:
        results = list(pool.map(race, range(racers)))
    assert results.count(True) == 1
