"""Remote desktop sessions and viewer tickets; the desktop.clipboard and desktop.consent
permissions.

Revision ID: 0004
Revises: 0003
Create Date: 2025-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.desktop  # noqa: F401  (registers the desktop models for autogenerate)

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen copies (a migration must not change when the code does).
MODES = ("view", "control")
STATES = (
    "requested",
    "prompting",
    "accepted",
    "denied",
    "timeout",
    "failed",
    "started",
    "ended",
)
NEW_PERMISSIONS = {
    "desktop.clipboard": (
        "Copy and paste text between the viewer and the device in a desktop session",
        ("administrator", "service_engineer"),
    ),
    "desktop.consent": (
        "Answer a desktop request for the customer, where the device allows it",
        ("administrator", "site_contact"),
    ),
}


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "desktop_sessions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("device_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("requested_at"),
        sa.Column("consent_timeout_s", sa.Integer(), nullable=False),
        _ts("decision_deadline"),
        sa.Column("consent_required", sa.Boolean(), nullable=True),
        sa.Column("remote_consent_allowed", sa.Boolean(), nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        _ts("decided_at", nullable=True),
        _ts("started_at", nullable=True),
        _ts("ended_at", nullable=True),
        sa.Column("end_reason", sa.String(200), nullable=True),
        sa.Column("bytes_to_viewer", sa.BigInteger(), nullable=False),
        sa.Column("bytes_from_viewer", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(_one_of("mode", MODES), name="ck_desktop_sessions_mode"),
        sa.CheckConstraint(_one_of("state", STATES), name="ck_desktop_sessions_state"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_desktop_sessions_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_desktop_sessions_user_id_users",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_desktop_sessions"),
    )
    op.create_index(
        "ix_desktop_sessions_device_requested", "desktop_sessions", ["device_id", "requested_at"]
    )
    op.create_index("ix_desktop_sessions_state", "desktop_sessions", ["state"])
    op.create_index("ix_desktop_sessions_user_id", "desktop_sessions", ["user_id"])

    op.create_table(
        "viewer_tickets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(36), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        _ts("issued_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        sa.CheckConstraint(_one_of("mode", MODES), name="ck_viewer_tickets_mode"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["desktop_sessions.id"],
            name="fk_viewer_tickets_session_id_desktop_sessions",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_viewer_tickets_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_viewer_tickets_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_viewer_tickets"),
        sa.UniqueConstraint("token_hash", name="uq_viewer_tickets_token_hash"),
    )
    op.create_index("ix_viewer_tickets_session_id", "viewer_tickets", ["session_id"])
    op.create_index("ix_viewer_tickets_expires_at", "viewer_tickets", ["expires_at"])

    _grant_new_permissions()


def _grant_new_permissions() -> None:
    bind = op.get_bind()
    permissions = sa.table(
        "permissions",
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("description", sa.Text),
    )
    roles = sa.table("roles", sa.column("id", sa.Integer), sa.column("name", sa.String))
    role_permissions = sa.table(
        "role_permissions",
        sa.column("role_id", sa.Integer),
        sa.column("permission_id", sa.Integer),
    )
    next_id = bind.scalar(sa.select(sa.func.coalesce(sa.func.max(permissions.c.id), 0))) or 0
    role_ids = {r.name: r.id for r in bind.execute(sa.select(roles.c.name, roles.c.id))}
    for offset, (name, (description, grantees)) in enumerate(NEW_PERMISSIONS.items(), start=1):
        perm_id = next_id + offset
        op.bulk_insert(permissions, [{"id": perm_id, "name": name, "description": description}])
        op.bulk_insert(
            role_permissions,
            [
                {"role_id": role_ids[role], "permission_id": perm_id}
                for role in grantees
                if role in role_ids
            ],
        )


def downgrade() -> None:
    bind = op.get_bind()
    permissions = sa.table("permissions", sa.column("id", sa.Integer), sa.column("name", sa.String))
    role_permissions = sa.table("role_permissions", sa.column("permission_id", sa.Integer))
    ids = sa.select(permissions.c.id).where(permissions.c.name.in_(list(NEW_PERMISSIONS)))
    bind.execute(sa.delete(role_permissions).where(role_permissions.c.permission_id.in_(ids)))
    bind.execute(sa.delete(permissions).where(permissions.c.name.in_(list(NEW_PERMISSIONS))))
    op.drop_table("viewer_tickets")
    op.drop_table("desktop_sessions")
