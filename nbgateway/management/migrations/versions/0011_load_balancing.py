"""Several targets per path (issue 16).

nbgateway extensions, nullable (replicas on 0010 keep working):

* ``services.load_balancing``: JSON of the service's load-balancing and
  health-check settings (policy, ejection threshold and back-off, active
  check path/interval/timeout/status); NULL = the gateway defaults.
* ``access_log_entries.upstream_target``: the target that served the
  request (``scheme://host:port``); NULL = none dialed or an older gateway.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("load_balancing", sa.Text(), nullable=True))
    with op.batch_alter_table("access_log_entries") as batch:
        batch.add_column(sa.Column("upstream_target", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_log_entries") as batch:
        batch.drop_column("upstream_target")
    with op.batch_alter_table("services") as batch:
        batch.drop_column("load_balancing")
