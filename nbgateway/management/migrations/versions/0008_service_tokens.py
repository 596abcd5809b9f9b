"""Machine-client service tokens per service (issue 16).

nbgateway extension, nullable so existing rows (and replicas still on 0007)
keep working:

* ``services.service_tokens``: JSON list of the service's token records (id,
  name, SHA-256 of the secret, created/expires/revoked unix seconds); NULL =
  none.  Secrets themselves are never stored.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("service_tokens", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("service_tokens")
