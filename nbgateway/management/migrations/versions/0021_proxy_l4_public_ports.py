"""The public L4 ports a gateway advertises.

nbgateway extension, nullable (replicas on 0020 keep working; their
gateways' rows read as "not advertised", which imposes nothing):

* ``proxies.l4_public_ports``: the host ports public TCP/UDP/TLS services may
  bind on the gateway (``ProxyCapabilities.nbgw_l4_public_ports``, its
  ``--l4-public-ports``), in the flag's syntax (``1024-65535``); ``""`` = no
  port, NULL = not advertised.
* ``proxies.l4_tls_port``: the gateway's main HTTPS port, on which a TLS
  service is accepted whatever the ranges (NULL or 0 = none).

Management refuses (422) a public L4 service's ``listen_port`` outside the
ports of an active gateway of its cluster that advertised them, and
auto-assigns inside them.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.add_column(sa.Column("l4_public_ports", sa.Text(), nullable=True))
        batch.add_column(sa.Column("l4_tls_port", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.drop_column("l4_tls_port")
        batch.drop_column("l4_public_ports")
