"""Account creation, instance administrators and gateway status messages.

nbgateway extensions, all nullable so existing rows keep working:

* ``accounts.name``: display name given when an instance admin creates an
  account through ``POST /api/accounts`` (NULL for the bootstrap account).
* ``users.instance_admin``: NULL/false for everyone except the operator. The
  bootstrap admin of the ``default`` account (user ``admin``) is the instance
  admin; an existing database gets that flag set here.
* ``services.meta_status_message`` / ``services.meta_status_updated_at``: the
  ``error_message`` a gateway sent with its last status update for the service
  (for example why it refused a ``direct_upstream`` target), and when.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: the bootstrap account and its first admin (see Store.ensure_default_account)
BOOTSTRAP_ACCOUNT = "default"
BOOTSTRAP_ADMIN = "admin"


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("name", sa.Text(), nullable=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("instance_admin", sa.Boolean(), nullable=True))
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("meta_status_message", sa.Text(), nullable=True))
        batch.add_column(sa.Column("meta_status_updated_at", sa.DateTime(), nullable=True))
    users = sa.table(
        "users",
        sa.column("id", sa.String()),
        sa.column("account_id", sa.String()),
        sa.column("instance_admin", sa.Boolean()),
    )
    op.execute(
        users.update()
        .where(users.c.id == BOOTSTRAP_ADMIN, users.c.account_id == BOOTSTRAP_ACCOUNT)
        .values(instance_admin=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("meta_status_updated_at")
        batch.drop_column("meta_status_message")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("instance_admin")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("name")
