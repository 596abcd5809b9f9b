"""gRPC / HTTP/2 upstreams (issue 16).

nbgateway extension, nullable (replicas on 0011 keep working):

* ``targets.upstream_protocol``: ``h2`` for an HTTP/2 target (h2c for
  ``http``, ALPN h2 for ``https``; trailers relayed, so gRPC services work),
  ``http1`` or NULL for HTTP/1.1.  Sent to gateways as
  ``PathTargetOptions.nbgw_upstream_protocol`` (field 1050).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("targets") as batch:
        batch.add_column(sa.Column("upstream_protocol", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("targets") as batch:
        batch.drop_column("upstream_protocol")
