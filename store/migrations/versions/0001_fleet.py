"""Fleet tables: customers, sites, devices, enrolment tokens, certificates, presence, relays.

Revision ID: 0001
Revises:
Create Date: 2025-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(63), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_customers"),
        sa.UniqueConstraint("slug", name="uq_customers_slug"),
    )
    op.create_table(
        "sites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(63), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name="fk_sites_customer_id_customers",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sites"),
        sa.UniqueConstraint("customer_id", "slug", name="uq_sites_customer_slug"),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        _ts("enrolled_at"),
        _ts("revoked_at", nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.Column("hostname", sa.String(255), nullable=True),
        sa.Column("model", sa.String(255), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name="fk_devices_customer_id_customers",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name="fk_devices_site_id_sites", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
    )
    op.create_index("ix_devices_customer_id", "devices", ["customer_id"])
    op.create_index("ix_devices_site_id", "devices", ["site_id"])
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        sa.Column("used_by_device_id", sa.String(36), nullable=True),
        _ts("revoked_at", nullable=True),
        sa.Column("created_by", sa.String(200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name="fk_enrollment_tokens_customer_id_customers",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name="fk_enrollment_tokens_site_id_sites",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["used_by_device_id"],
            ["devices.id"],
            name="fk_enrollment_tokens_used_by_device_id_devices",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_enrollment_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_enrollment_tokens_token_hash"),
    )
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("device_id", sa.String(36), nullable=True),
        sa.Column("service_name", sa.String(63), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        _ts("not_before"),
        _ts("not_after"),
        _ts("issued_at"),
        _ts("revoked_at", nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.CheckConstraint("kind IN ('device', 'service', 'server')", name="ck_certificates_kind"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_certificates_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("serial", name="pk_certificates"),
    )
    op.create_index("ix_certificates_device_id", "certificates", ["device_id"])
    op.create_table(
        "relays",
        sa.Column("relay_id", sa.String(100), nullable=False),
        sa.Column("service_url", sa.String(500), nullable=False),
        _ts("started_at"),
        _ts("heartbeat_at"),
        sa.PrimaryKeyConstraint("relay_id", name="pk_relays"),
    )
    op.create_table(
        "presence",
        sa.Column("device_id", sa.String(36), nullable=False),
        sa.Column("relay_id", sa.String(100), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        _ts("connected_at", nullable=True),
        _ts("last_seen", nullable=True),
        _ts("disconnected_at", nullable=True),
        sa.Column("peer_addr", sa.String(100), nullable=True),
        sa.Column("agent_version", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_presence_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_presence"),
    )
    op.create_index("ix_presence_relay_id", "presence", ["relay_id"])


def downgrade() -> None:
    op.drop_table("presence")
    op.drop_table("relays")
    op.drop_table("certificates")
    op.drop_table("enrollment_tokens")
    op.drop_table("devices")
    op.drop_table("sites")
    op.drop_table("customers")
