"""Fleet tables: customers, sites, devices, enrolment tokens, certificates, presence, relays.

Models are typed SQLAlchemy 2 declarative classes. Every timestamp column uses
:class:`UTCDateTime`, so the application only ever sees timezone-aware UTC
datetimes whatever the backend returns (SQLite hands back naive values).
Later areas (portal users, roles, audit) add their own models on the same
:class:`Base` and their own Alembic migrations after ``0001``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

#: Deterministic constraint names, so migrations can drop/alter them by name on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Slugs name customers and sites in URLs and certificate URIs.
SLUG_MAX = 63
#: A uuid4 in its canonical 36-character text form.
DEVICE_ID_LEN = 36
#: A 128-bit serial in hex is 32 characters; leave room for larger CA-chosen serials (160 bits).
SERIAL_MAX = 40


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend: the one place naive values are handled.

    Binding a naive datetime is a programming error (its zone is unknown), so it raises.
    SQLite stores the UTC wall time without an offset; results get UTC attached again.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime (store.db.utcnow())")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base shared by every Outlink table (one metadata, one migration history)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime()}


class Customer(Base):
    """An organisation that owns devices; the outer unit of access scoping."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(SLUG_MAX), unique=True)
    name: Mapped[str] = mapped_column(String(200))

    sites: Mapped[list[Site]] = relationship(back_populates="customer")


class Site(Base):
    """A place (hospital, building) of one customer; slugs are unique per customer."""

    __tablename__ = "sites"
    __table_args__ = (UniqueConstraint("customer_id", "slug", name="uq_sites_customer_slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="RESTRICT"))
    slug: Mapped[str] = mapped_column(String(SLUG_MAX))
    name: Mapped[str] = mapped_column(String(200))

    customer: Mapped[Customer] = relationship(back_populates="sites")


class Device(Base):
    """An enrolled device. Its id is chosen by the server at enrolment and lives in its cert."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(DEVICE_ID_LEN), primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="RESTRICT"), index=True
    )
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"), index=True)
    enrolled_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(Text)
    hostname: Mapped[str | None] = mapped_column(String(255))
    model: Mapped[str | None] = mapped_column(String(255))

    customer: Mapped[Customer] = relationship()
    site: Mapped[Site] = relationship()


class EnrollmentToken(Base):
    """A one-time enrolment token; only the SHA-256 of its secret is stored."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="RESTRICT"))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by_device_id: Mapped[str | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL")
    )
    revoked_at: Mapped[datetime | None]
    created_by: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)

    customer: Mapped[Customer] = relationship()
    site: Mapped[Site] = relationship()


class Certificate(Base):
    """Every certificate the fleet CA issued, so revocation can name serials."""

    __tablename__ = "certificates"
    __table_args__ = (
        CheckConstraint("kind IN ('device', 'service', 'server')", name="kind"),
        Index("ix_certificates_device_id", "device_id"),
    )

    serial: Mapped[str] = mapped_column(String(SERIAL_MAX), primary_key=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    service_name: Mapped[str | None] = mapped_column(String(SLUG_MAX))
    kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text)
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    issued_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(Text)


class Relay(Base):
    """A running relay process; the portal reaches it at ``service_url``."""

    __tablename__ = "relays"

    relay_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    service_url: Mapped[str] = mapped_column(String(500))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]


class Presence(Base):
    """Where a device is connected (or was last); written by relays, read by the portal."""

    __tablename__ = "presence"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    relay_id: Mapped[str | None] = mapped_column(String(100), index=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    connected_at: Mapped[datetime | None]
    last_seen: Mapped[datetime | None]
    disconnected_at: Mapped[datetime | None]
    peer_addr: Mapped[str | None] = mapped_column(String(100))
    agent_version: Mapped[str | None] = mapped_column(String(64))
