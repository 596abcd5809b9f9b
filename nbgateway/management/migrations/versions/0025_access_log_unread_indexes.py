"""Access log, PostgreSQL: drop the two indexes no query of the store reads.

``ix_access_log_entries_service_id`` ``(service_id)`` and
``ix_access_log_entries_timestamp`` ``(timestamp)`` (revision 0001) cost an
index insert per ingested entry and a cleanup per deleted one.  Every query
of ``access_log_entries`` names the account (the list and its counts,
retention, account deletion), and the account's indexes answer it:
``(account_id, timestamp, id)`` (revision 0004) a time range at least as
well as the timestamp alone (which reads every account's entries in the
range), ``access_log_hours`` / ``access_log_values`` and the failures index
(which holds the service) a service filter.  At 10 million entries
(``bench/accesslog_list.py``, 44 shapes) no statement scanned the service
index, and without either index every shape stayed as fast.  SQLite
dropped the timestamp index in revision 0022 and keeps the service index
(its list has no per-service counts).

Dropping them pays for part of revisions 0023 and 0024's write cost
(docs/management.md).  The downgrade builds them again.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

_INDEXES = (("ix_access_log_entries_service_id", "service_id"),
            ("ix_access_log_entries_timestamp", "timestamp"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _ in _INDEXES:
        op.drop_index(name, table_name="access_log_entries")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, column in _INDEXES:
        op.create_index(name, "access_log_entries", [column])
