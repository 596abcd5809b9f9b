"""Private services (NetBird #6226) plus nbgateway extensions.

Adds, as nullable columns so existing rows keep working:
``services.private`` (NULL reads as false), ``services.access_groups`` (JSON
text, NULL reads as "none"), ``targets.direct_upstream`` and
``proxies.private`` (NULL = not reported). nbgateway extensions:
``access_log_entries.user_groups`` (group names captured at write time) and the
``proxy_inbound_listeners`` table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("private", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("access_groups", sa.Text(), nullable=True))
    with op.batch_alter_table("targets") as batch:
        batch.add_column(sa.Column("direct_upstream", sa.Boolean(), nullable=True))
    with op.batch_alter_table("proxies") as batch:
        batch.add_column(sa.Column("private", sa.Boolean(), nullable=True))
    with op.batch_alter_table("access_log_entries") as batch:
        batch.add_column(sa.Column("user_groups", sa.Text(), nullable=True))
    op.create_table(
        "proxy_inbound_listeners",
        sa.Column("proxy_id", sa.String(255), nullable=False),
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("tunnel_ip", sa.String(64), nullable=False),
        sa.Column("https_port", sa.Integer(), nullable=False),
        sa.Column("http_port", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("proxy_id", "account_id", name="pk_proxy_inbound_listeners"),
    )


def downgrade() -> None:
    op.drop_table("proxy_inbound_listeners")
    with op.batch_alter_table("access_log_entries") as batch:
        batch.drop_column("user_groups")
    with op.batch_alter_table("proxies") as batch:
        batch.drop_column("private")
    with op.batch_alter_table("targets") as batch:
        batch.drop_column("direct_upstream")
    with op.batch_alter_table("services") as batch:
        batch.drop_column("access_groups")
        batch.drop_column("private")
