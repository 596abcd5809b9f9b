"""Session revocation (issue 16).

nbgateway extension, nullable (replicas on 0009 keep working):

* ``services.sessions_not_before``: unix seconds; gateways refuse an
  ``nb_session`` cookie issued before it.  Set for every service of an
  account when a user is blocked or deleted or a group is deleted or changes
  members, so a revoked identity's cookies stop working with the next mapping
  update.  NULL = never.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("sessions_not_before", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("sessions_not_before")
