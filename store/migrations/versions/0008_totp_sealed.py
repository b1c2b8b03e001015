"""TOTP secrets sealed at rest: the column grows to hold a Fernet token.

Sealing needs the portal's secret key, which the database (and a relay running this
migration) never has; the portal's ``init`` seals the rows still bare right after
this upgrade (`web.sealing.seal_plaintext_rows`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.alter_column(
            "totp_secret", existing_type=sa.String(64), type_=sa.String(255), nullable=True
        )


def downgrade() -> None:
    # A sealed secret does not fit the old column: downgrading turns second factors off.
    op.execute("UPDATE users SET totp_secret = NULL, totp_last_step = NULL")
    with op.batch_alter_table("users") as batch:
        batch.alter_column(
            "totp_secret", existing_type=sa.String(255), type_=sa.String(64), nullable=True
        )
