"""Access-log list and retention index.

``GET /api/events/proxy`` filters by account and sorts by (timestamp, id);
retention deletes an account's oldest entries.  Both are served by one
composite index ``(account_id, timestamp, id)``, which replaces the
single-column ``account_id`` index (its prefix; one index less to maintain
on every ingested row).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_access_log_entries_account_time",
        "access_log_entries",
        ["account_id", "timestamp", "id"],
    )
    op.drop_index("ix_access_log_entries_account_id", table_name="access_log_entries")


def downgrade() -> None:
    op.create_index("ix_access_log_entries_account_id", "access_log_entries", ["account_id"])
    op.drop_index("ix_access_log_entries_account_time", table_name="access_log_entries")
