"""One-time enrolment tokens bound to a customer/site.

The secret is shown once at creation and only its SHA-256 is stored, so a
database leak does not hand out enrolments. Consumption is one conditional
UPDATE: the database decides the single winner between concurrent attempts.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.models import Customer, EnrollmentToken, Site

log = logging.getLogger(__name__)

TOKEN_PREFIX = "olk_"  # noqa: S105  (a marker, not a secret: lets scanners spot leaked tokens)
#: 32 random bytes: unguessable, and long enough that hashing without a salt is fine.
TOKEN_BYTES = 32
#: Tokens are for an installer at the device right now: short by default, a week at most.
DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(days=7)
#: Longer input cannot be a token; refuse before hashing attacker-sized strings.
MAX_SECRET_LEN = 128


@dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly created token. ``secret`` exists only here: show it once, then forget it."""

    id: int
    secret: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a successfully consumed token entitles: a device at this customer/site."""

    token_id: int
    customer_id: int
    site_id: int


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as listed for operators (never the secret)."""

    id: int
    customer: str
    site: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by_device_id: str | None
    revoked_at: datetime | None
    created_by: str | None
    note: str | None

    def state(self, now: datetime) -> str:
        """``used``, ``revoked``, ``expired`` or ``active``."""
        if self.used_at is not None:
            return "used"
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "active"


def hash_secret(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session,
    site: Site,
    *,
    ttl: timedelta = DEFAULT_TTL,
    now: datetime | None = None,
    created_by: str | None = None,
    note: str | None = None,
) -> NewToken:
    """Create a token for a device at ``site`` valid for ``ttl``."""
    if not timedelta(0) < ttl <= MAX_TTL:
        raise ValueError(f"token lifetime must be positive and at most {MAX_TTL}")
    now = now or datetime.now(UTC)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    row = EnrollmentToken(
        token_hash=hash_secret(secret),
        customer_id=site.customer_id,
        site_id=site.id,
        created_at=now,
        expires_at=now + ttl,
        created_by=created_by,
        note=note,
    )
    session.add(row)
    session.flush()
    log.info("= created enrolment token id=%d site_id=%d expires=%s", row.id, site.id, now + ttl)
    return NewToken(id=row.id, secret=secret, expires_at=row.expires_at)


def consume_token(
    session: Session, secret: str, *, now: datetime | None = None
) -> TokenGrant | None:
    """Mark the token used and return its grant, or None if it cannot be used.

    Unknown, used, revoked and expired tokens all give None: callers must not
    tell a peer which. The single conditional UPDATE makes concurrent calls
    safe: at most one of them changes the row. Commit the session to keep
    the consumption; roll back (e.g. enrolment failed later) to give it back.
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > MAX_SECRET_LEN:
        return None
    now = now or datetime.now(UTC)
    row = session.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.token_hash == hash_secret(secret),
            EnrollmentToken.used_at.is_(None),
            EnrollmentToken.revoked_at.is_(None),
            EnrollmentToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(EnrollmentToken.id, EnrollmentToken.customer_id, EnrollmentToken.site_id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    return TokenGrant(token_id=row.id, customer_id=row.customer_id, site_id=row.site_id)


def list_tokens(session: Session) -> list[TokenInfo]:
    """All tokens, newest first."""
    rows = session.execute(
        select(EnrollmentToken, Customer.slug, Site.slug)
        .join(Customer, EnrollmentToken.customer_id == Customer.id)
        .join(Site, EnrollmentToken.site_id == Site.id)
        .order_by(EnrollmentToken.created_at.desc(), EnrollmentToken.id.desc())
    )
    return [
        TokenInfo(
            id=t.id,
            customer=c,
            site=s,
            created_at=t.created_at,
            expires_at=t.expires_at,
            used_at=t.used_at,
            used_by_device_id=t.used_by_device_id,
            revoked_at=t.revoked_at,
            created_by=t.created_by,
            note=t.note,
        )
        for t, c, s in rows
    ]


def revoke_token(session: Session, token_id: int, *, now: datetime | None = None) -> bool:
    """Revoke an unused token; False if it does not exist or was already used or revoked."""
    result = session.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.id == token_id,
            EnrollmentToken.used_at.is_(None),
            EnrollmentToken.revoked_at.is_(None),
        )
        .values(revoked_at=now or datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
