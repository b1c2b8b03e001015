"""The alarms.handle and rules.manage permissions (portal pages for alarms and rules).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen copy (a migration must not change when the code does). Rules apply to the whole
# fleet (they are not scoped), so only administrators edit them by default.
NEW_PERMISSIONS = {
    "alarms.handle": (
        "Acknowledge, comment on and close alarms of devices in scope",
        ("administrator", "service_engineer"),
    ),
    "rules.manage": (
        "Create, change and delete alarm and notification rules; read the notifications log",
        ("administrator",),
    ),
}

_permissions = sa.table(
    "permissions",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("description", sa.Text),
)
_roles = sa.table("roles", sa.column("id", sa.Integer), sa.column("name", sa.String))
_role_permissions = sa.table(
    "role_permissions",
    sa.column("role_id", sa.Integer),
    sa.column("permission_id", sa.Integer),
)


def upgrade() -> None:
    bind = op.get_bind()
    next_id = bind.scalar(sa.select(sa.func.coalesce(sa.func.max(_permissions.c.id), 0))) or 0
    role_ids = {r.name: r.id for r in bind.execute(sa.select(_roles.c.name, _roles.c.id))}
    for offset, (name, (description, grantees)) in enumerate(NEW_PERMISSIONS.items(), start=1):
        perm_id = next_id + offset
        op.bulk_insert(_permissions, [{"id": perm_id, "name": name, "description": description}])
        op.bulk_insert(
            _role_permissions,
            [
                {"role_id": role_ids[role], "permission_id": perm_id}
                for role in grantees
                if role in role_ids
            ],
        )


def downgrade() -> None:
    bind = op.get_bind()
    ids = sa.select(_permissions.c.id).where(_permissions.c.name.in_(list(NEW_PERMISSIONS)))
    bind.execute(sa.delete(_role_permissions).where(_role_permissions.c.permission_id.in_(ids)))
    bind.execute(sa.delete(_permissions).where(_permissions.c.name.in_(list(NEW_PERMISSIONS))))
