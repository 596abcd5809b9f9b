"""Access log: a per-day index for the sort by URL.

``GET /api/events/proxy?sort_by=url`` sorts by ``(host, path)``, ties by id.
It was a top-N sort of the account's every entry: 1.1-1.6 s at a million
entries per account on PostgreSQL (``bench/accesslog_list.py``).

``ix_access_log_entries_day_account_url``: ``(date_trunc('day', timestamp),
account_id, host, path, id)`` including ``timestamp`` (so the per-day read
is index-only, as for revision 0020's duration index).  The day leads, as in
revision 0020: a batch's rows land in the current day's part of the index.
The page is merged from the first ``offset + page_size`` entries of each day
(``store/_accesslog_query.py``).

Host and path are unbounded text and a btree entry holds at most about
2,700 bytes (a longer one fails the insert), so the index is partial: the
entries whose host and path take at most 2,000 bytes together.  The others
are found by ``ix_access_log_entries_account_long_url`` ``(account_id, id)``
(partial, the complementary predicate: normally empty) and merged in.

PostgreSQL only (like revision 0020).  ``CREATE INDEX`` holds writers of
``access_log_entries`` until the migration commits (docs/management.md has
the build time at 10 million rows); gateways' batches wait and are retried.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

#: the entries the per-day index cannot hold (the list's literal condition)
LONG_URL = "octet_length(host) + octet_length(path) > 2000"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(
        "ix_access_log_entries_day_account_url", "access_log_entries",
        [sa.text("date_trunc('day', timestamp)"), sa.column("account_id"), sa.column("host"),
         sa.column("path"), sa.column("id")],
        postgresql_include=["timestamp"], postgresql_where=sa.text(f"NOT ({LONG_URL})"))
    op.create_index(
        "ix_access_log_entries_account_long_url", "access_log_entries",
        ["account_id", "id"], postgresql_where=sa.text(LONG_URL))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_access_log_entries_account_long_url", table_name="access_log_entries")
    op.drop_index("ix_access_log_entries_day_account_url", table_name="access_log_entries")
