"""Access log, PostgreSQL: the user index carries duration, status code, service and method.

A regular user's ``GET /api/events/proxy`` is always filtered to its own
``user_id``, and revision 0016's ``(account_id, user_id, timestamp, id)``
finds those entries (about 5,000 per user at a million per account in
``bench/accesslog_list.py``).  A list that also filters on the service, the
method or the status code, or sorts by duration, method or status code, then
still read every one of the user's rows from the table (one random heap page
each: 70-145 ms at 10 million rows).  The same index with ``INCLUDE
(duration, status_code, service_id, method)`` answers such a list's count
and its page's ids from the index alone; only the page's rows are read from
the table.  The included columns are narrow (a bigint, an integer and two
bounded strings); host and path (unbounded text) are not included: an index
entry over about 2,700 bytes would fail the insert.

The index keeps its name.  The upgrade builds the new one beside the old one,
drops the old one and renames the new one, so a user's list keeps an index
while it is built; ``CREATE INDEX`` holds writers of ``access_log_entries``
until the migration commits (tens of seconds at 10 million rows).  The
downgrade builds 0016's index again the same way.  SQLite has no user index
(revision 0016) and is left as it is.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

_NAME = "ix_access_log_entries_account_user_time"
_BUILDING = "ix_access_log_entries_account_user_building"
_KEY = ["account_id", "user_id", "timestamp", "id"]
_INCLUDE = ["duration", "status_code", "service_id", "method"]


def _replace(include: list[str]) -> None:
    op.create_index(_BUILDING, "access_log_entries", _KEY, postgresql_include=include)
    op.drop_index(_NAME, table_name="access_log_entries")
    op.execute(f"ALTER INDEX {_BUILDING} RENAME TO {_NAME}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _replace(_INCLUDE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _replace([])
