"""Telemetry tables: records (idempotency ledger + samples), events, properties, hourly
aggregates, rollup markers, rules, alarms, alarm comments, notifications, log uploads.

Revision ID: 0003
Revises: 0002
Create Date: 2025-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.telemetry  # noqa: F401  (registers the telemetry models for autogenerate)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copy of store.telemetry.BigId (a migration must not change when the code does).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ACTIVE = sa.text("state != 'closed'")


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _device_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["device_id"], ["devices.id"], name=f"fk_{table}_device_id_devices", ondelete="CASCADE"
    )


def _device_id() -> sa.Column[object]:
    return sa.Column("device_id", sa.String(36), nullable=False)


def upgrade() -> None:
    op.create_table(
        "telemetry_records",
        _device_id(),
        sa.Column("seq", sa.BigInteger(), nullable=False, autoincrement=False),
        _ts("ts"),
        sa.Column("kind", sa.String(8), nullable=False),
        _ts("received_at"),
        sa.Column("data", sa.Text(), nullable=True),
        _device_fk("telemetry_records"),
        sa.PrimaryKeyConstraint("device_id", "seq", name="pk_telemetry_records"),
    )
    op.create_index("ix_telemetry_records_device_ts", "telemetry_records", ["device_id", "ts"])
    op.create_index("ix_telemetry_records_ts", "telemetry_records", ["ts"])

    op.create_table(
        "telemetry_events",
        sa.Column("id", BIG_ID, nullable=False),
        _device_id(),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        _ts("ts"),
        _ts("received_at"),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("severity", sa.SmallInteger(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _device_fk("telemetry_events"),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_events"),
        sa.UniqueConstraint("device_id", "seq", name="uq_telemetry_events_device_seq"),
    )
    op.create_index("ix_telemetry_events_device_ts", "telemetry_events", ["device_id", "ts"])
    op.create_index("ix_telemetry_events_ts", "telemetry_events", ["ts"])

    op.create_table(
        "telemetry_properties",
        _device_id(),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        _ts("ts"),
        _ts("updated_at"),
        sa.Column("data", sa.Text(), nullable=False),
        _device_fk("telemetry_properties"),
        sa.PrimaryKeyConstraint("device_id", name="pk_telemetry_properties"),
    )

    op.create_table(
        "telemetry_hourly",
        _device_id(),
        _ts("hour"),
        sa.Column("metric", sa.String(120), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        _device_fk("telemetry_hourly"),
        sa.PrimaryKeyConstraint("device_id", "hour", "metric", name="pk_telemetry_hourly"),
    )
    op.create_index("ix_telemetry_hourly_hour", "telemetry_hourly", ["hour"])

    op.create_table(
        "telemetry_rollup_pending",
        _device_id(),
        _ts("hour"),
        _device_fk("telemetry_rollup_pending"),
        sa.PrimaryKeyConstraint("device_id", "hour", name="pk_telemetry_rollup_pending"),
    )

    op.create_table(
        "telemetry_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _ts("created_at"),
        sa.Column("created_by", sa.String(64), nullable=True),
        _ts("updated_at"),
        sa.Column("updated_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_rules"),
    )

    op.create_table(
        "telemetry_alarms",
        sa.Column("id", sa.Integer(), nullable=False),
        _device_id(),
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("severity", sa.SmallInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        _ts("first_ts"),
        _ts("last_ts"),
        _ts("opened_at"),
        _ts("updated_at"),
        _ts("acknowledged_at", nullable=True),
        sa.Column("acknowledged_by", sa.String(64), nullable=True),
        _ts("closed_at", nullable=True),
        sa.Column("closed_by", sa.String(64), nullable=True),
        sa.CheckConstraint(
            "state IN ('open', 'acknowledged', 'closed')", name="ck_telemetry_alarms_state"
        ),
        _device_fk("telemetry_alarms"),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["telemetry_rules.id"],
            name="fk_telemetry_alarms_rule_id_telemetry_rules",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_alarms"),
    )
    op.create_index(
        "uq_telemetry_alarms_active_key",
        "telemetry_alarms",
        ["device_id", "key"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )
    op.create_index("ix_telemetry_alarms_state_opened", "telemetry_alarms", ["state", "opened_at"])
    op.create_index(
        "ix_telemetry_alarms_device_opened", "telemetry_alarms", ["device_id", "opened_at"]
    )

    op.create_table(
        "telemetry_alarm_comments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alarm_id", sa.Integer(), nullable=False),
        _ts("ts"),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["alarm_id"],
            ["telemetry_alarms.id"],
            name="fk_telemetry_alarm_comments_alarm_id_telemetry_alarms",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_alarm_comments"),
    )
    op.create_index(
        "ix_telemetry_alarm_comments_alarm", "telemetry_alarm_comments", ["alarm_id", "id"]
    )

    op.create_table(
        "telemetry_notifications",
        sa.Column("id", BIG_ID, nullable=False),
        _ts("created_at"),
        sa.Column("alarm_id", sa.Integer(), nullable=True),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("device_id", sa.String(36), nullable=True),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("target", sa.String(254), nullable=False),
        sa.Column("dedup_key", sa.String(400), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("sent_at", nullable=True),
        sa.Column("error", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(
            ["alarm_id"],
            ["telemetry_alarms.id"],
            name="fk_telemetry_notifications_alarm_id_telemetry_alarms",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_notifications"),
    )
    op.create_index(
        "ix_telemetry_notifications_target_created",
        "telemetry_notifications",
        ["target", "created_at"],
    )
    op.create_index(
        "ix_telemetry_notifications_dedup_created",
        "telemetry_notifications",
        ["dedup_key", "created_at"],
    )

    op.create_table(
        "telemetry_log_uploads",
        sa.Column("id", sa.String(36), nullable=False),
        _device_id(),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("received", sa.BigInteger(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("completed_at", nullable=True),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("stored_name", sa.String(200), nullable=True),
        sa.CheckConstraint(
            "state IN ('requested', 'receiving', 'complete', 'failed', 'refused')",
            name="ck_telemetry_log_uploads_state",
        ),
        _device_fk("telemetry_log_uploads"),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_log_uploads"),
    )
    op.create_index(
        "ix_telemetry_log_uploads_device_created",
        "telemetry_log_uploads",
        ["device_id", "created_at"],
    )


def downgrade() -> None:
    for table in (
        "telemetry_log_uploads",
        "telemetry_notifications",
        "telemetry_alarm_comments",
        "telemetry_alarms",
        "telemetry_rules",
        "telemetry_rollup_pending",
        "telemetry_hourly",
        "telemetry_properties",
        "telemetry_events",
        "telemetry_records",
    ):
        op.drop_table(table)
