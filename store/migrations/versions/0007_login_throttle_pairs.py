"""Login throttling by (account, address) with growing delays.

A third counter kind, ``pair``, and the time of the pair's last successful sign-in
(which makes its address usual for the account). Old rows are dropped: they were
15-minute locks and counters that the new policy counts differently.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM login_throttle")
    with op.batch_alter_table("login_throttle") as batch:
        batch.add_column(sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("ck_login_throttle_kind", type_="check")
        batch.create_check_constraint("kind", "kind IN ('pair', 'user', 'addr')")


def downgrade() -> None:
    op.execute("DELETE FROM login_throttle WHERE kind = 'pair'")
    with op.batch_alter_table("login_throttle") as batch:
        batch.drop_constraint("ck_login_throttle_kind", type_="check")
        batch.create_check_constraint("kind", "kind IN ('user', 'addr')")
        batch.drop_column("last_success_at")
