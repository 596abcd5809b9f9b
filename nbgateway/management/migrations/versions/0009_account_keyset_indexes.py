"""Keyset pagination indexes: ``(account_id, id)`` on peers and services.

``GET /api/peers?limit=&cursor=`` reads ``WHERE account_id = ? AND id > ?
ORDER BY id LIMIT n``. With only the single-column ``account_id`` index SQLite
fetched every row of the account and sorted it for each page; the composite
index serves the filter, the range and the order, so a page costs the same at
row 100 as at row 10,000. Additive (the old indexes stay), so replicas still
on the previous revision keep working while one upgrades.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_peers_account_id_id", "peers", ["account_id", "id"])
    op.create_index("ix_services_account_id_id", "services", ["account_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_services_account_id_id", table_name="services")
    op.drop_index("ix_peers_account_id_id", table_name="peers")
