"""mTLS client certificates per service (issue 16).

nbgateway extension, nullable (replicas on the previous revision keep
working):

* ``services.client_cert_auth``: JSON of the service's client CA bundle (PEM,
  CA certificates only) and the certificate -> user mapping rule (``email``
  or an explicit ``list`` of ``{match, user_id}``); NULL = no mTLS.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("client_cert_auth", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("client_cert_auth")
