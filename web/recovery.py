"""Recovery codes: single-use ways in when the authenticator app is lost.

Ten codes are made when the second factor is turned on and shown that once. Each
holds 50 random bits (ten base32 characters, shown as two groups of five). The
database keeps only an HMAC of each under a key derived from the portal's secret key
(`web.sealing.derive_key`), so a copy of the database cannot be searched for them offline;
a code is spent by an UPDATE that only the first use can win.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from store.portal import RecoveryCode
from web import sealing

#: Codes made per enrolment.
COUNT = 10
#: 10 base32 characters = 50 bits: far beyond online guessing under the login throttle.
CODE_CHARS = 10
#: RFC 4648 base32: no 0/O, 1/I or 8/B to confuse when read from paper.
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_INFO = b"outlink portal: recovery code digests, v1"


def normalise(code: str) -> str:
    """What a user typed, as it was generated: upper case, no spaces or dashes."""
    return "".join(c for c in code.upper() if c not in " -\t")


def _digest(secret_key: str, code: str) -> str:
    return hmac.new(
        sealing.derive_key(secret_key, _INFO), normalise(code).encode(), hashlib.sha256
    ).hexdigest()


def looks_like_code(text: str) -> bool:
    """True if ``text`` has a recovery code's shape (and so is not a six-digit TOTP code)."""
    plain = normalise(text)
    return len(plain) == CODE_CHARS and all(c in ALPHABET for c in plain)


def discard(session: Session, user_id: int) -> None:
    """Drop all of the user's codes (the second factor is off, or new ones replace them)."""
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))


def replace_codes(session: Session, secret_key: str, user_id: int) -> list[str]:
    """Drop the user's codes and make ``COUNT`` new ones; return them for showing once."""
    discard(session, user_id)
    codes = []
    for _ in range(COUNT):
        plain = "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))
        codes.append(f"{plain[:5]}-{plain[5:]}")
        session.add(RecoveryCode(user_id=user_id, digest=_digest(secret_key, plain)))
    session.flush()
    return codes


def spend(session: Session, secret_key: str, user_id: int, code: str, now: datetime) -> bool:
    """Use ``code`` once: True for an unused code of this user, and never again after."""
    spent = session.scalar(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user_id,
            RecoveryCode.digest == _digest(secret_key, code),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=now)
        .returning(RecoveryCode.id)
    )
    return spent is not None  # a second use (or a race's loser) updates no row


def remaining(session: Session, user_id: int) -> int:
    """How many unused codes the user has left."""
    return (
        session.scalar(
            select(func.count(RecoveryCode.id)).where(
                RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None)
            )
        )
        or 0
    )
