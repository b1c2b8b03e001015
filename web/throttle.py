"""Login throttling with growing delays, keyed so that nobody can lock someone else out.

Three counters, all in the database so every worker and every portal instance sees
the same numbers (ASVS 5.0 6.3.1):

- ``pair`` (account name, address): after ``free_pair`` failures each further one
  doubles a delay, from ``first_delay`` up to ``max_delay``. An attacker guessing at
  one account from one address slows down; nobody else is affected.
- ``addr`` (address): the same after ``free_addr`` failures, so one address spraying
  many names slows down too.
- ``user`` (account name): failures from addresses the account has never signed in
  from (within ``known_for``). Its delay stops a distributed guess at one account, but
  applies only to such addresses: the owner, signing in from where they usually do,
  keeps getting in while an attacker elsewhere is refused.

While a delay holds, even the right password is refused -- with exactly the answer a
wrong password gets -- and the attempt does not count again (hammering cannot grow
the delay without bound). Failures are forgotten ``max_delay`` after the last one.
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
    """Free attempts per key before delays begin, and how the delay grows."""

    free_pair: int
    free_addr: int
    free_user: int
    first_delay: timedelta
    max_delay: timedelta
    #: A successful sign-in makes its address "usual" for the account for this long.
    known_for: timedelta

    def delay(self, failures: int, free: int) -> timedelta | None:
        """The delay after ``failures`` failures (None while still within the free ones)."""
        if failures < free:
            return None
        doubling = min(failures - free, 32)  # 2**32 * any delay is already past max
        return min(self.first_delay * (1 << doubling), self.max_delay)


def pair_key(username: str, addr: str) -> str:
    """The ``pair`` key: a newline cannot occur in a stored name or an address."""
    return f"{username}\n{addr}"


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


def is_usual_address(
    session: Session, username: str, addr: str, now: datetime, policy: ThrottlePolicy
) -> bool:
    """True if ``username`` signed in successfully from ``addr`` within ``known_for``."""
    row = session.get(LoginThrottle, ("pair", pair_key(username, addr)))
    return (
        row is not None
        and row.last_success_at is not None
        and now - row.last_success_at <= policy.known_for
    )


def _keys(
    session: Session, username: str, addr: str, now: datetime, policy: ThrottlePolicy
) -> list[tuple[str, str, int]]:
    """(kind, key, free attempts) of the counters that apply to this attempt."""
    keys = [("pair", pair_key(username, addr), policy.free_pair), ("addr", addr, policy.free_addr)]
    if not is_usual_address(session, username, addr, now, policy):
        keys.append(("user", username, policy.free_user))
    return keys


def is_locked(
    session: Session, username: str, addr: str, now: datetime, policy: ThrottlePolicy
) -> bool:
    """True if a delay holds for this (account, address) attempt."""
    for kind, key, _free in _keys(session, username, addr, now, policy):
        row = session.get(LoginThrottle, (kind, key), populate_existing=True)
        if row is not None and row.locked_until is not None and row.locked_until > now:
            return True
    return False


def record_failure(
    session: Session, username: str, addr: str, now: datetime, policy: ThrottlePolicy
) -> list[tuple[str, timedelta]]:
    """Count one failure against every counter that applies; return the delays it started."""
    started = []
    for kind, key, free in _keys(session, username, addr, now, policy):
        row = _row(session, kind, key, now)
        if row.locked_until is not None and row.locked_until > now:
            continue  # already delayed: the attempt was refused without counting
        if now - row.window_start > policy.max_delay:
            row.failures = 0  # forgiven: quiet for longer than the longest delay
        row.failures += 1
        row.window_start = now
        delay = policy.delay(row.failures, free)
        if delay is not None:
            row.locked_until = now + delay
            started.append((kind, delay))
    session.flush()
    return started


def record_success(session: Session, username: str, addr: str, now: datetime) -> None:
    """Forgive this (account, address) and remember the address as usual for the account.

    The account-wide and address counters stay: a success does not excuse the
    failures that came from elsewhere or for other names.
    """
    row = _row(session, "pair", pair_key(username, addr), now)
    row.failures, row.locked_until, row.last_success_at = 0, None, now
    session.flush()
