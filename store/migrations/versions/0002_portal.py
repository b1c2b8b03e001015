"""Portal tables: users, roles, permissions, scopes, web sessions, login throttling,
session requests, audit events (hash chain, append-only triggers) and the built-in roles.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.portal  # noqa: F401  (registers the portal models on Base.metadata for autogenerate)

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64

# Frozen copies of the seed data (a migration must not change when the code does).
PERMISSIONS = {
    "device.view": "See devices, their identity and presence",
    "telemetry.view": "See telemetry and alarms",
    "files.view": "See logs and files",
    "desktop.view": "Request a view-only remote desktop",
    "desktop.control": "Request a remote desktop with control",
    "diagnostics.shell": "Open a diagnostics shell",
    "updates.push": "Push software updates",
    "devices.enroll": "Create enrolment tokens",
    "devices.revoke": "Revoke devices",
    "users.manage": "Manage users, roles and scopes",
    "audit.read": "Read and export the audit trail",
}
ROLES = {
    "administrator": ("Everything, everywhere", list(PERMISSIONS)),
    "service_engineer": (
        "Services devices in scope",
        [
            "device.view",
            "telemetry.view",
            "files.view",
            "desktop.view",
            "desktop.control",
            "diagnostics.shell",
            "updates.push",
            "devices.enroll",
        ],
    ),
    "analyst": (
        "Read-only: devices, telemetry, files and the audit trail in scope",
        ["device.view", "telemetry.view", "files.view", "audit.read"],
    ),
    "site_contact": (
        "A customer's contact: sees the devices of their sites",
        ["device.view", "telemetry.view"],
    ),
}


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _tables() -> None:
    op.create_table(
        "roles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_roles"),
        sa.UniqueConstraint("name", name="uq_roles_name"),
    )
    op.create_table(
        "permissions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_permissions"),
        sa.UniqueConstraint("name", name="uq_permissions_name"),
    )
    op.create_table(
        "role_permissions",
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.Column("permission_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_id"], ["roles.id"], name="fk_role_permissions_role_id_roles", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["permission_id"],
            ["permissions.id"],
            name="fk_role_permissions_permission_id_permissions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("role_id", "permission_id", name="pk_role_permissions"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.Column("all_scope", sa.Boolean(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("must_change_password", sa.Boolean(), nullable=False),
        sa.Column("totp_secret", sa.String(64), nullable=True),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
        sa.Column("cert_fingerprint", sa.String(64), nullable=True),
        _ts("created_at"),
        sa.Column("created_by", sa.String(64), nullable=True),
        _ts("password_changed_at"),
        _ts("last_login_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["role_id"], ["roles.id"], name="fk_users_role_id_roles", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
        sa.UniqueConstraint("cert_fingerprint", name="uq_users_cert_fingerprint"),
    )
    op.create_table(
        "user_scopes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("device_id", sa.String(36), nullable=True),
        sa.CheckConstraint(
            "(CASE WHEN customer_id IS NULL THEN 0 ELSE 1 END"
            " + CASE WHEN site_id IS NULL THEN 0 ELSE 1 END"
            " + CASE WHEN device_id IS NULL THEN 0 ELSE 1 END) = 1",
            name="ck_user_scopes_exactly_one",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_user_scopes_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name="fk_user_scopes_customer_id_customers",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name="fk_user_scopes_site_id_sites", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_user_scopes_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_user_scopes"),
    )
    op.create_index("ix_user_scopes_user_id", "user_scopes", ["user_id"])
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("auth_method", sa.String(32), nullable=True),
        _ts("created_at"),
        _ts("last_seen_at"),
        _ts("expires_at"),
        sa.Column("source", sa.String(100), nullable=True),
        sa.Column("user_agent", sa.String(300), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_web_sessions_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_web_sessions"),
    )
    op.create_index("ix_web_sessions_user_id", "web_sessions", ["user_id"])
    op.create_index("ix_web_sessions_last_seen_at", "web_sessions", ["last_seen_at"])
    op.create_table(
        "login_throttle",
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        _ts("window_start"),
        _ts("locked_until", nullable=True),
        sa.CheckConstraint("kind IN ('user', 'addr')", name="ck_login_throttle_kind"),
        sa.PrimaryKeyConstraint("kind", "key", name="pk_login_throttle"),
    )
    op.create_table(
        "session_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(36), nullable=False),
        sa.Column("requested_by", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("decided_at", nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        _ts("started_at", nullable=True),
        _ts("ended_at", nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'approved', 'denied', 'timed_out', 'started', 'ended',"
            " 'cancelled')",
            name="ck_session_requests_state",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_session_requests_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"],
            ["users.id"],
            name="fk_session_requests_requested_by_users",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_session_requests"),
    )
    op.create_index(
        "ix_session_requests_device_created", "session_requests", ["device_id", "created_at"]
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        _ts("ts"),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(100), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("device_id", sa.String(36), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_ts", "audit_events", ["ts"])
    op.create_index("ix_audit_events_kind_id", "audit_events", ["kind", "id"])
    op.create_index("ix_audit_events_actor_id", "audit_events", ["actor", "id"])
    op.create_index("ix_audit_events_device_id_id", "audit_events", ["device_id", "id"])
    op.create_index("ix_audit_events_customer_id_id", "audit_events", ["customer_id", "id"])
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False),
        sa.Column("anchor_hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_audit_chain_head_single_row"),
        sa.PrimaryKeyConstraint("id", name="pk_audit_chain_head"),
    )


# Append-only in the database itself: UPDATE is refused, DELETE only for rows the
# retention anchor already covers (store.portal.prune_chain moves the anchor first).
# An attacker with DDL rights can drop these; the hash chain is what catches that.
SQLITE_TRIGGERS = [
    """CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END""",
    """CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    WHEN OLD.id > (SELECT pruned_through FROM audit_chain_head WHERE id = 1)
    BEGIN SELECT RAISE(ABORT, 'audit_events rows are removed only by retention'); END""",
]
POSTGRES_TRIGGERS = [
    """CREATE FUNCTION audit_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' OR TG_OP = 'TRUNCATE' THEN
            RAISE EXCEPTION 'audit_events is append-only';
        END IF;
        IF OLD.id > (SELECT pruned_through FROM audit_chain_head WHERE id = 1) THEN
            RAISE EXCEPTION 'audit_events rows are removed only by retention';
        END IF;
        RETURN OLD;
    END $$""",
    """CREATE TRIGGER audit_events_guard BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_guard()""",
    """CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_guard()""",
]


def _seed() -> None:
    permissions = sa.table(
        "permissions",
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("description", sa.Text),
    )
    roles = sa.table(
        "roles",
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("description", sa.Text),
    )
    role_permissions = sa.table(
        "role_permissions", sa.column("role_id", sa.Integer), sa.column("permission_id", sa.Integer)
    )
    head = sa.table(
        "audit_chain_head",
        sa.column("id", sa.Integer),
        sa.column("last_id", sa.BigInteger),
        sa.column("last_hash", sa.String),
        sa.column("pruned_through", sa.BigInteger),
        sa.column("anchor_hash", sa.String),
    )
    perm_ids = {name: i for i, name in enumerate(PERMISSIONS, start=1)}
    op.bulk_insert(
        permissions,
        [{"id": i, "name": n, "description": PERMISSIONS[n]} for n, i in perm_ids.items()],
    )
    op.bulk_insert(
        roles,
        [{"id": i, "name": n, "description": ROLES[n][0]} for i, n in enumerate(ROLES, start=1)],
    )
    op.bulk_insert(
        role_permissions,
        [
            {"role_id": i, "permission_id": perm_ids[p]}
            for i, n in enumerate(ROLES, start=1)
            for p in ROLES[n][1]
        ],
    )
    op.bulk_insert(
        head,
        [
            {
                "id": 1,
                "last_id": 0,
                "last_hash": GENESIS_HASH,
                "pruned_through": 0,
                "anchor_hash": GENESIS_HASH,
            }
        ],
    )


def upgrade() -> None:
    _tables()
    _seed()
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":  # explicit ids above did not advance the serial sequences
        op.execute(
            "SELECT setval(pg_get_serial_sequence('roles', 'id'), (SELECT max(id) FROM roles))"
        )
        op.execute(
            "SELECT setval(pg_get_serial_sequence('permissions', 'id'),"
            " (SELECT max(id) FROM permissions))"
        )
    for statement in {"sqlite": SQLITE_TRIGGERS, "postgresql": POSTGRES_TRIGGERS}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_guard ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_guard()")
    for table in (
        "audit_chain_head",
        "audit_events",
        "session_requests",
        "login_throttle",
        "web_sessions",
        "user_scopes",
        "users",
        "role_permissions",
        "permissions",
        "roles",
    ):
        op.drop_table(table)
