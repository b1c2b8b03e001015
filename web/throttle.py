"""Login throttling: count failures per account name and per source address, lock for a while.

Both counters live in the database so every worker and every portal instance
sees the same numbers. A lock is temporary (``lockout_minutes``); while it
holds, even the right password is refused -- with exactly the answer a wrong
password gets, so a locked account cannot be told from a wrong guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.portal import LoginThrottle


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """Thresholds; the window equals the lock duration (failures older than it are forgiven)."""

    max_failures_user: int
    max_failures_addr: int
    lockout: timedelta


def _row(session: Session, kind: str, key: str, now: datetime) -> LoginThrottle:
    row = session.get(LoginThrottle, (kind, key), populate_existing=True)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = LoginThrottle(kind=kind, key=key, failures=0, window_start=now)
            session.add(row)
    except IntegrityError:  # another worker inserted it first
        row = session.execute(
            select(LoginThrottle).where(LoginThrottle.kind == kind, LoginThrottle.key == key)
        ).scalar_one()
    return row


def is_locked(session: Session, username: str, addr: str, now: datetime) -> bool:
    """True if the account name or the address is currently locked."""
    rows = session.execute(
        select(LoginThrottle.locked_until).where(
            ((LoginThrottle.kind == "user") & (LoginThrottle.key == username))
            | ((LoginThrottle.kind == "addr") & (LoginThrottle.key == addr))
        )
    ).scalars()
    return any(until is not None and until > now for until in rows)


def record_failure(
    session: Session, username: str, addr: str, now: datetime, policy: ThrottlePolicy
) -> list[str]:
    """Count one failure against both keys; return the kinds that became locked by it."""
    locked = []
    for kind, key, limit in (
        ("user", username, policy.max_failures_user),
        ("addr", addr, policy.max_failures_addr),
    ):
        row = _row(session, kind, key, now)
        if row.locked_until is not None and row.locked_until > now:
            continue  # already locked: the lock does not grow with every attempt
        if now - row.window_start > policy.lockout:
            row.failures, row.window_start = 0, now
        row.failures += 1
        if row.failures >= limit:
            row.locked_until, row.failures, row.window_start = now + policy.lockout, 0, now
            locked.append(kind)
    session.flush()
    return locked


def record_success(session: Session, username: str) -> None:
    """A successful login forgives the account's failures (not the address's)."""
    row = session.get(LoginThrottle, ("user", username))
    if row is not None:
        session.delete(row)
