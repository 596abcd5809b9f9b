"""Index on a group's member positions.

A new member is appended at ``max(position) + 1`` of its group; without an
index on ``(group_id, position)`` that maximum reads every member of the group
(the ``All`` group holds every peer), so each peer creation cost grew with the
account. Adding an index is additive: replicas still running the previous
revision keep working while it is created.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_group_peers_group_position", "group_peers", ["group_id", "position"])


def downgrade() -> None:
    op.drop_index("ix_group_peers_group_position", table_name="group_peers")
