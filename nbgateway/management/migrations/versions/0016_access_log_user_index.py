"""Access log: an account's entries of one user by time.

A regular (non-admin) user reads ``GET /api/events/proxy`` filtered to its
own requests (``user_id``), and admins filter by user too.  With only
``(account_id, timestamp, id)`` the count of such a page read every entry of
the account: 2.1 s p50, 5.5 s p95 at a million entries per account on
PostgreSQL (``bench/accesslog_list.py``).  ``(account_id, user_id,
timestamp, id)`` answers the count and the newest-first page from the user's
own range (6.7 ms p95 there).  The price is paid by ingestion: one more
index entry per row (a batch touches about as many leaf pages as it has
distinct users).  PostgreSQL only: there the database server pays it (about
30 % fewer rows/s inserted at 10 million rows, still about twice what the
management sends); on SQLite the ingesting process itself would (18,600-22,400
-> 13,500-15,900 entries per CPU-second in process), and SQLite is the small
deployment's database.

On PostgreSQL ``CREATE INDEX`` holds writers of ``access_log_entries`` until
the migration commits (about 40 s at 10 million rows on the reference
machine); gateways' batches wait and are retried, none is lost.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(
        "ix_access_log_entries_account_user_time",
        "access_log_entries",
        ["account_id", "user_id", "timestamp", "id"],
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_access_log_entries_account_user_time", table_name="access_log_entries")
