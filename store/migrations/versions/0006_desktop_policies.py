"""Each device's desktop consent setting, as its agent reports it on connecting.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.desktop  # noqa: F401  (registers the desktop models for autogenerate)

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "desktop_policies",
        sa.Column("device_id", sa.String(36), nullable=False),
        sa.Column("consent_required", sa.Boolean(), nullable=False),
        sa.Column("consent_timeout_s", sa.Integer(), nullable=False),
        sa.Column("remote_consent_allowed", sa.Boolean(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_desktop_policies_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_desktop_policies"),
    )


def downgrade() -> None:
    op.drop_table("desktop_policies")
