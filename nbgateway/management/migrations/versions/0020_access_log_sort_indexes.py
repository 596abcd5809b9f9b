"""Access log: per-day indexes for the source-IP filter and the duration sort.

``GET /api/events/proxy`` answers ``total_records`` exactly.  Some list
shapes read every entry of the account at a million entries per account on
PostgreSQL (``bench/accesslog_list.py``): the exact ``source_ip`` filter
(its count and its page) and a sort by ``duration`` (a top-N sort over the
account's entries); revision 0020 answers these two.

Plain btrees in the list's order (``(account_id, location_connection_ip,
timestamp, id)`` and ``(account_id, duration, id)``) were measured to cost
too much ingestion together: 46-47 % fewer rows per CPU-second of
PostgreSQL at 10 million rows (the IP index alone 16-28 %), because every
inserted row lands on a random leaf of a large index.  The indexes here
lead with the entry's day, ``date_trunc('day', timestamp)`` (immutable on
the naive UTC column), so a batch's rows land in the current day's part of
each index; the duration index then costs 7-9 % instead of about a third.
A page is merged from per-day reads (at most ``DAY_MAX`` index entries,
else planned as before):

* ``ix_access_log_entries_day_account_ip``: ``(day, account_id,
  location_connection_ip, timestamp, id)``: the filter's count is one range
  per day, its newest-first page the newest entries of each day's range.
* ``ix_access_log_entries_day_account_duration``: ``(day, account_id,
  duration, id)`` including ``timestamp``: a page sorted by duration is
  merged from the first entries of each day's range, read from the index
  alone (PostgreSQL reads an expression's column from the heap unless the
  index holds it: 15 ms without, 6.6 ms with, for page 4 of 50).

The day leads, before the account: a query with nothing but the account
(a user's count, say) cannot use these indexes, so the planner does not
take them over the indexes made for it (with the account first it did, on
an un-analyzed table, for a user's count).

A third, ``(account_id, day, host, path, id)`` for the sort by URL (partial:
entries whose host and path fit a btree entry), was measured and not kept:
with it ingestion fell under the write budget (docs/management.md).

The days of an account come from ``access_log_hours`` (revision 0017); the
list is in ``store/_accesslog_query.py``.  PostgreSQL only (like revision
0016): on SQLite the ingesting process would pay, and SQLite sorts and
counts as before.

``CREATE INDEX`` holds writers of ``access_log_entries`` until the migration
commits (see docs/management.md for the build time at 10 million rows);
gateways' batches wait and are retried, none is lost.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

#: the entry's day (a literal unit: the list's expression must be the index's)
DAY = sa.text("date_trunc('day', timestamp)")

#: (name, key, included columns)
_INDEXES = (
    ("ix_access_log_entries_day_account_ip",
     [DAY, sa.column("account_id"), sa.column("location_connection_ip"),
      sa.column("timestamp"), sa.column("id")], []),
    ("ix_access_log_entries_day_account_duration",
     [DAY, sa.column("account_id"), sa.column("duration"), sa.column("id")], ["timestamp"]),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns, include in _INDEXES:
        op.create_index(name, "access_log_entries", columns, postgresql_include=include)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _, _ in reversed(_INDEXES):
        op.drop_index(name, table_name="access_log_entries")
