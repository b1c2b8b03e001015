"""Portal tables: users, roles, permissions, scopes, web sessions, login throttling,
session requests and the hash-chained audit trail.

The fleet tables live in :mod:`store.models`; these share its :class:`~store.models.Base`
(one metadata, one migration history: revision ``0002``). The audit chain's append and
verify rules live here too, next to the table they protect, and use nothing but
SQLAlchemy: the relay appends its security events with :func:`append_audit` without
importing Flask.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    RowMapping,
    String,
    Text,
    delete,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from store.models import Base, Device

#: Usernames are short, lowercase identifiers (they appear in audit rows and cert URIs).
USERNAME_MAX = 64
#: The chain's first ``prev_hash``: 64 zeros, so every row has a well-formed predecessor.
GENESIS_HASH = "0" * 64
#: The single row of ``audit_chain_head``.
CHAIN_HEAD_ID = 1
#: An audit summary is one line for a table cell; details carry the rest.
AUDIT_SUMMARY_MAX = 500
#: The kind of the event that records a retention prune (and the anchor it left).
PRUNED_KIND = "audit.pruned"
#: Bounded so one hostile value (e.g. an agent's error text) cannot bloat the trail.
AUDIT_DETAILS_MAX = 8192


class Role(Base):
    """A named bundle of permissions (administrator, service_engineer, analyst, site_contact)."""

    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")

    permissions: Mapped[list[Permission]] = relationship(
        secondary="role_permissions", order_by="Permission.name"
    )


class Permission(Base):
    """One function a role may use; names are the ones in ``web.authz.Perm``."""

    __tablename__ = "permissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")


class RolePermission(Base):
    """Which permission a role grants."""

    __tablename__ = "role_permissions"

    role_id: Mapped[int] = mapped_column(
        ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True
    )
    permission_id: Mapped[int] = mapped_column(
        ForeignKey("permissions.id", ondelete="CASCADE"), primary_key=True
    )


class User(Base):
    """A portal account. One role; reach limited by ``all_scope`` or its ``scopes`` rows.

    ``username`` is stored lowercase and never changes (audit rows name it).
    ``cert_fingerprint`` pins the one staff client certificate that may log in as
    this user (SHA-256 of its DER); clearing it revokes that certificate here.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id", ondelete="RESTRICT"))
    all_scope: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Sealed (``web.sealing``): never the bare secret.
    totp_secret: Mapped[str | None] = mapped_column(String(255))
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    cert_fingerprint: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(USERNAME_MAX))
    password_changed_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]

    role: Mapped[Role] = relationship()
    scopes: Mapped[list[UserScope]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )


class RecoveryCode(Base):
    """One single-use recovery code of a user's second factor (``web.recovery``).

    ``digest`` is a keyed HMAC of the code, never the code; ``used_at`` is set by the
    one use that counts.
    """

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None]


class UserScope(Base):
    """One customer, site or device a user may reach (exactly one of the three is set)."""

    __tablename__ = "user_scopes"
    __table_args__ = (
        CheckConstraint(
            "(CASE WHEN customer_id IS NULL THEN 0 ELSE 1 END"
            " + CASE WHEN site_id IS NULL THEN 0 ELSE 1 END"
            " + CASE WHEN device_id IS NULL THEN 0 ELSE 1 END) = 1",
            name="exactly_one",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))

    user: Mapped[User] = relationship(back_populates="scopes")


class WebSession(Base):
    """A server-side browser session. ``id`` is the SHA-256 of the cookie's random token,
    so a copy of this table does not let anyone ride a session.

    ``user_id`` is NULL before login (the row then only carries the CSRF token and
    flashed messages). Deleting a row ends that session on its next request.
    """

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    data: Mapped[str] = mapped_column(Text, default="{}")
    auth_method: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime] = mapped_column(index=True)
    expires_at: Mapped[datetime]
    source: Mapped[str | None] = mapped_column(String(100))
    user_agent: Mapped[str | None] = mapped_column(String(300))


class LoginThrottle(Base):
    """Failed-login counter and delay for one key (see `web.throttle`).

    ``kind`` is ``"pair"`` (key: name and address joined by a newline), ``"user"``
    (key: the lowercased name as typed, known or not, so unknown names are throttled
    exactly like real ones) or ``"addr"`` (key: the client address). A ``pair`` row
    also remembers the last successful sign-in, which makes its address usual.
    """

    __tablename__ = "login_throttle"
    __table_args__ = (CheckConstraint("kind IN ('pair', 'user', 'addr')", name="kind"),)

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime]
    locked_until: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]


class SessionRequest(Base):
    """A request for a remote desktop or diagnostics session on one device (R30, R31).

    Later issues drive its states; this issue only stores and audits it.
    """

    __tablename__ = "session_requests"
    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'approved', 'denied', 'timed_out', 'started', 'ended',"
            " 'cancelled')",
            name="state",
        ),
        Index("ix_session_requests_device_created", "device_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class AuditEvent(Base):
    """One audit record, linked to its predecessor by ``prev_hash``.

    ``hash = sha256(canonical JSON of every other column + prev_hash)`` (see
    :func:`event_hash`). Rows are only ever inserted by :func:`append_audit`; database
    triggers refuse UPDATE, and DELETE of rows not yet covered by a retention anchor.
    ``details`` holds the canonical JSON text itself, so what is hashed is what is stored.
    No foreign keys: the trail must outlive the users and devices it names.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_ts", "ts"),
        Index("ix_audit_events_kind_id", "kind", "id"),
        Index("ix_audit_events_actor_id", "actor", "id"),
        Index("ix_audit_events_device_id_id", "device_id", "id"),
        Index("ix_audit_events_customer_id_id", "customer_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(200))
    user_id: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(String(100))
    customer_id: Mapped[int | None] = mapped_column(Integer)
    site_id: Mapped[int | None] = mapped_column(Integer)
    device_id: Mapped[str | None] = mapped_column(String(36))
    summary: Mapped[str] = mapped_column(Text)
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The chain's single head row: the lock appends serialise on, and the retention anchor.

    ``anchor_hash`` is the hash of the last pruned row (the ``prev_hash`` the first
    remaining row must carry); ``pruned_through`` its id. Both start at genesis.
    """

    __tablename__ = "audit_chain_head"
    __table_args__ = (CheckConstraint(f"id = {CHAIN_HEAD_ID}", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
    pruned_through: Mapped[int] = mapped_column(BigInteger, default=0)
    anchor_hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)


# --- the chain ---------------------------------------------------------------------------

#: Columns covered by the hash, in the canonical document (``prev_hash`` included).
HASHED_FIELDS = (
    "id",
    "ts",
    "kind",
    "outcome",
    "actor",
    "user_id",
    "source",
    "customer_id",
    "site_id",
    "device_id",
    "summary",
    "details",
    "prev_hash",
)


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value``: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _ts_text(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def event_hash(fields: Mapping[Any, Any]) -> str:
    """SHA-256 hex over the canonical JSON of the hashed fields (``ts`` as ISO UTC, µs)."""
    doc = {name: fields[name] for name in HASHED_FIELDS}
    doc["ts"] = _ts_text(doc["ts"])
    return hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def lock_chain(session: Session) -> AuditChainHead:
    """Take the chain's write lock inside the caller's transaction and return the head.

    The first statement is a write to the head row: PostgreSQL row-locks it until
    commit (concurrent appenders queue behind it, and READ COMMITTED then shows them
    the new head); SQLite takes its database write lock right there (waiting out
    ``busy_timeout``), which is what ``BEGIN IMMEDIATE`` would do. Either way no two
    appenders read the same head, so the chain cannot fork.
    """
    session.execute(
        update(AuditChainHead)
        .where(AuditChainHead.id == CHAIN_HEAD_ID)
        .values(last_id=AuditChainHead.last_id)
    )
    head = session.execute(
        select(AuditChainHead)
        .where(AuditChainHead.id == CHAIN_HEAD_ID)
        .execution_options(populate_existing=True)
    ).scalar_one()
    return head


def append_audit(
    session: Session,
    kind: str,
    *,
    outcome: str = "success",
    actor: str | None = None,
    user_id: int | None = None,
    source: str | None = None,
    customer_id: int | None = None,
    site_id: int | None = None,
    device_id: str | None = None,
    summary: str = "",
    details: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> AuditEvent:
    """Append one event to the chain in the caller's transaction (commit makes it real).

    Call it in the same transaction as the change it records, so either both are
    stored or neither is. ``device_id`` alone is enough: customer and site are taken
    from the device row (that is what scoped audit reads filter on). Relays call this
    for their security events with ``actor="relay:<relay id>"``.
    """
    if device_id is not None and (customer_id is None or site_id is None):
        row = session.execute(
            select(Device.customer_id, Device.site_id).where(Device.id == device_id)
        ).first()
        if row is not None:
            customer_id = row.customer_id if customer_id is None else customer_id
            site_id = row.site_id if site_id is None else site_id
    details_text = canonical_json(dict(details or {}))
    if len(details_text) > AUDIT_DETAILS_MAX:
        details_text = canonical_json({"truncated": _clip(details_text, AUDIT_DETAILS_MAX)})
    head = lock_chain(session)
    ts = (now or datetime.now(UTC)).astimezone(UTC)
    event = AuditEvent(
        id=head.last_id + 1,
        ts=ts,
        kind=kind,
        outcome=outcome,
        actor=actor,
        user_id=user_id,
        source=source,
        customer_id=customer_id,
        site_id=site_id,
        device_id=device_id,
        summary=_clip(summary, AUDIT_SUMMARY_MAX),
        details=details_text,
        prev_hash=head.last_hash,
    )
    event.hash = event_hash({name: getattr(event, name) for name in HASHED_FIELDS})
    session.add(event)
    head.last_id, head.last_hash = event.id, event.hash
    session.flush()
    return event


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What :func:`verify_chain` found: ``ok``, rows checked, and the first bad row."""

    ok: bool
    checked: int
    first_bad_id: int | None = None
    problem: str | None = None
    head_hash: str | None = None


#: Rows fetched per round trip while verifying (bounded memory for millions of rows).
VERIFY_BATCH = 5000


def _rows(session: Session, after_id: int) -> Iterator[RowMapping]:
    table = AuditEvent.__table__
    while True:
        batch = (
            session.execute(
                select(table).where(table.c.id > after_id).order_by(table.c.id).limit(VERIFY_BATCH)
            )
            .mappings()
            .all()
        )
        if not batch:
            return
        yield from batch
        after_id = batch[-1]["id"]


def verify_chain(session: Session) -> ChainReport:
    """Walk the chain from the retention anchor to the head; report the first broken row.

    Detects an edited row (its hash no longer matches), a deleted or inserted row (ids
    not consecutive, or ``prev_hash`` not the predecessor's hash), a truncated tail
    (the head row names a later event) and a forged anchor (the head's anchor differs
    from the one the newest ``audit.pruned`` event recorded). A tail truncation that
    also rewrites the head row is only caught against a head hash kept elsewhere: the
    report's ``head_hash`` is what to keep.
    """
    head = session.get(AuditChainHead, CHAIN_HEAD_ID)
    if head is None:
        return ChainReport(False, 0, None, "chain head row missing")
    expected_prev, expected_id, checked = head.anchor_hash, head.pruned_through + 1, 0
    recorded_anchor: tuple[int, str] | None = None
    for row in _rows(session, head.pruned_through):
        if row["id"] != expected_id:
            return ChainReport(False, checked, row["id"], f"row {expected_id} is missing")
        if row["prev_hash"] != expected_prev:
            return ChainReport(False, checked, row["id"], "prev_hash does not match the chain")
        if event_hash(row) != row["hash"]:
            return ChainReport(False, checked, row["id"], "row content does not match its hash")
        if row["kind"] == PRUNED_KIND:
            info = json.loads(row["details"])
            recorded_anchor = (int(info["pruned_through_id"]), str(info["pruned_through_hash"]))
        expected_prev, expected_id, checked = row["hash"], row["id"] + 1, checked + 1
    anchor = (head.pruned_through, head.anchor_hash)
    if anchor != (0, GENESIS_HASH) and recorded_anchor != anchor:
        return ChainReport(False, checked, head.pruned_through + 1, "retention anchor was altered")
    if expected_id - 1 != head.last_id or expected_prev != head.last_hash:
        return ChainReport(False, checked, expected_id, "chain ends before the recorded head")
    return ChainReport(True, checked, head_hash=head.last_hash)


def prune_chain(session: Session, before: datetime, *, actor: str | None = None) -> int:
    """Delete events older than ``before`` and leave the chain verifiable; return the count.

    Events are a prefix of the chain by time (ids and timestamps are both assigned
    under the chain lock), so "older than" is "id <= P" for the newest old row P.
    The head row records P's id and hash as the anchor (the ``prev_hash`` the first
    remaining row carries), the delete trigger then allows exactly those rows to go,
    and an ``audit.pruned`` event repeats the anchor inside the chain, where it is
    itself protected by the hashes after it.
    """
    head = lock_chain(session)
    table = AuditEvent.__table__
    last_old = session.execute(
        select(table.c.id, table.c.hash)
        .where(table.c.ts < before)
        .order_by(table.c.id.desc())
        .limit(1)
    ).first()
    if last_old is None or last_old.id <= head.pruned_through:
        return 0
    count = int(last_old.id - head.pruned_through)
    head.pruned_through, head.anchor_hash = last_old.id, last_old.hash
    session.flush()  # the delete trigger reads pruned_through
    session.execute(
        delete(AuditEvent)
        .where(AuditEvent.id <= last_old.id)
        .execution_options(synchronize_session=False)
    )
    append_audit(
        session,
        PRUNED_KIND,
        actor=actor,
        summary=f"retention removed {count} events before {_ts_text(before)}",
        details={
            "pruned_through_id": last_old.id,
            "pruned_through_hash": last_old.hash,
            "count": count,
            "before": _ts_text(before),
        },
    )
    return count
