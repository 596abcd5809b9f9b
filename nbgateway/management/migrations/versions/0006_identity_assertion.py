"""Per-service identity assertion and session length (issue 16).

nbgateway extensions, all nullable so existing rows keep working:

* ``services.assertion_mode``: ``off`` (NULL), ``on`` or ``required``: whether
  gateways stamp a signed ``X-NetBird-Jwt-Assertion`` on forwarded requests.
* ``services.assertion_keys``: JSON list of the service's Ed25519 assertion
  key pairs (current first, retired ones until their tokens expired).  NULL
  for existing services: a key is generated on their next update or rotation.
* ``services.max_session_age_seconds``: the session cookie/JWT lifetime
  (NULL = the default 24 h).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("assertion_mode", sa.String(16), nullable=True))
        batch.add_column(sa.Column("assertion_keys", sa.Text(), nullable=True))
        batch.add_column(sa.Column("max_session_age_seconds", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("max_session_age_seconds")
        batch.drop_column("assertion_keys")
        batch.drop_column("assertion_mode")
