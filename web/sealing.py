"""TOTP secrets sealed at rest: Fernet (AES-128-CBC + HMAC-SHA256) under a key derived
from the portal's secret key.

A copy of the database alone (a backup, a replica, an SQL injection) then yields no
second factors; the key lives in the data directory (``secret_key``, mode 0600),
never in the database. The key is derived with HKDF under its own label, so it is
independent of the session-signing use of the same secret. Replacing the secret key
makes every sealed secret unreadable: those users enrol their second factor again.

Rows written before sealing existed hold the bare base32 secret; `seal_plaintext_rows`
(run by ``init`` right after the schema upgrade) seals them, and `unseal` refuses
anything unsealed, so a plaintext secret never works as one.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.portal import User

#: Marks a sealed value and the scheme it was sealed with (a later scheme gets v2:).
PREFIX = "v1:"
#: HKDF label: a key for this purpose only.
_INFO = b"outlink portal: TOTP secrets at rest, v1"


def derive_key(secret_key: str, label: bytes) -> bytes:
    """A 256-bit key for one purpose (``label``), derived from the portal's secret key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(
        secret_key.encode()
    )


def totp_box(secret_key: str) -> Fernet:
    """The Fernet key for TOTP secrets, derived from the portal's secret key."""
    return Fernet(base64.urlsafe_b64encode(derive_key(secret_key, _INFO)))


def seal(box: Fernet, secret: str) -> str:
    """The value to store for ``secret``."""
    return PREFIX + box.encrypt(secret.encode()).decode()


def unseal(box: Fernet, stored: str) -> str | None:
    """The secret in ``stored``; None if it is not sealed, or sealed under another key."""
    if not stored.startswith(PREFIX):
        return None
    try:
        return box.decrypt(stored[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        return None


def seal_plaintext_rows(session: Session, box: Fernet) -> int:
    """Seal every TOTP secret still stored bare; return how many (idempotent)."""
    rows = session.execute(
        select(User.id, User.totp_secret).where(
            User.totp_secret.is_not(None), User.totp_secret.not_like(PREFIX + "%")
        )
    ).all()
    for user_id, plain in rows:
        assert plain is not None  # selected IS NOT NULL
        # Compare-and-set: a concurrent init that sealed the row first wins.
        session.execute(
            update(User)
            .where(User.id == user_id, User.totp_secret == plain)
            .values(totp_secret=seal(box, plain))
        )
    return len(rows)
