"""Access log, SQLite: the store counts new entries per batch; no row trigger, no time index.

``access_log_counts`` (revision 0015) holds the number of entries of each
account.  On SQLite a row-level ``AFTER INSERT`` trigger kept it: two
statements (an ``INSERT OR IGNORE`` of the account's row, an ``UPDATE`` of
it, each a B-tree probe and the first a foreign-key check) per stored entry,
about 40 % of SQLite's CPU per entry in the ingesting process (a bare
``sqlite3`` executemany of the same rows into the same schema: 14.5-15.4 us
per row with the trigger, 7.9-8.9 us without; SQLite has no statement-level
triggers).  From this revision the store adds each batch's new entries per
account in the inserting transaction (``store/_accesslog.py``,
``executemany_rows``: one ``executemany`` per account of the batch, whose
row count is what that account gained, then one counter upsert per
account), so the counter stays exact on every write path of the store.

And ``ix_access_log_entries_timestamp`` (revision 0001, ``(timestamp)``)
goes on SQLite: every query of the table names the account (the list, its
counts, retention, account deletion), and ``(account_id, timestamp, id)``
(revision 0004) answers each of them at least as well, so it only cost a
B-tree insert per entry (about 0.3-0.8 us of the bare insert's 8-9 us).
PostgreSQL keeps it (its ingestion is the database server's CPU).

Only the insert trigger goes: retention and account deletion still decrement
through ``access_log_counts_delete`` (deletions are not the hot path).
PostgreSQL keeps its statement-level triggers (one upsert per account and
statement already) and is not touched here.

A process still running a revision before 0022 on the same SQLite file would
insert without counting; SQLite is the single-process deployment's database,
so upgrade every process together (as for any schema change).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

#: revision 0015's SQLite insert trigger, recreated on downgrade
_SQLITE_INSERT_TRIGGER = """\
CREATE TRIGGER access_log_counts_insert AFTER INSERT ON access_log_entries
    BEGIN
        INSERT OR IGNORE INTO access_log_counts (account_id, entries)
            VALUES (NEW.account_id, 0);
        UPDATE access_log_counts SET entries = entries + 1
            WHERE account_id = NEW.account_id;
    END"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS access_log_counts_insert")
    op.drop_index("ix_access_log_entries_timestamp", table_name="access_log_entries")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        return
    op.create_index("ix_access_log_entries_timestamp", "access_log_entries", ["timestamp"])
    # the counters are exact (the store kept them): the trigger takes over from here
    op.execute(_SQLITE_INSERT_TRIGGER)
