"""Access-log list at a million rows per account: an entry counter and a failures index.

``GET /api/events/proxy`` answers ``total_records``; counting an account's
entries with ``count(*)`` read its whole ``(account_id, timestamp, id)``
index range (a million entries under the default retention cap) on every
dashboard page.  And ``status=failed`` (a few % of the entries) had no index
of its own: its count and its pages read every entry of the account.

* ``access_log_counts``: one row per account holding the number of its
  ``access_log_entries`` rows, backfilled here and kept by triggers on
  ``access_log_entries`` (insert, delete), so every write path (batch
  ingestion, retention, account deletion) and replicas still running the
  previous revision keep it right: the database counts in the writing
  transaction.  The row goes with its account (foreign key, cascade); an
  entry of an account that does not exist fails to insert (the store
  checks the account in the same transaction, a concurrent deletion makes
  the batch retry without it).  Entries of deleted accounts left from
  before (none are written) are not counted.  PostgreSQL: statement-level
  triggers over the transition tables (one counter upsert per account and
  statement, not per row; the accounts in ascending order, so concurrent
  batches lock counters in one order).  SQLite: row-level triggers.  An
  entry's ``account_id`` is never updated (access logs are append-only), so
  updates are not counted.
* ``ix_access_log_entries_failed``: ``(account_id, timestamp, id)`` of the
  failed entries only (``status_code >= 400 OR reason <> ''``, the list's
  ``status=failed`` condition, textually, so the planner can use it), on
  PostgreSQL with ``status_code`` included (a ``status_code`` >= 400 filter
  counts from the index alone): counts and pages of failures read only
  them; a successful entry does not touch the index when it is written.

On PostgreSQL everything runs in the migration's transaction and
``CREATE TRIGGER`` locks out writers of ``access_log_entries`` until commit,
so no entry written concurrently can slip between the backfill and the
triggers.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

FAILED = "status_code >= 400 OR reason <> ''"

_SQLITE_TRIGGERS = (
    """CREATE TRIGGER access_log_counts_insert AFTER INSERT ON access_log_entries
    BEGIN
        INSERT OR IGNORE INTO access_log_counts (account_id, entries)
            VALUES (NEW.account_id, 0);
        UPDATE access_log_counts SET entries = entries + 1
            WHERE account_id = NEW.account_id;
    END""",
    """CREATE TRIGGER access_log_counts_delete AFTER DELETE ON access_log_entries
    BEGIN
        UPDATE access_log_counts SET entries = entries - 1
            WHERE account_id = OLD.account_id;
    END""",
)

# ``SET search_path FROM CURRENT``: the functions resolve the tables in the
# schema they were created in, whatever the writing session's search_path.
_PG_FUNCTIONS = (
    """CREATE OR REPLACE FUNCTION nbgw_access_log_counts_insert() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO access_log_counts AS c (account_id, entries)
            SELECT account_id, count(*) FROM nbgw_new GROUP BY account_id ORDER BY account_id
            ON CONFLICT (account_id) DO UPDATE SET entries = c.entries + excluded.entries;
        RETURN NULL;
    END
    $$""",
    """CREATE OR REPLACE FUNCTION nbgw_access_log_counts_delete() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    DECLARE
        r record;
    BEGIN
        FOR r IN SELECT account_id, count(*) AS n FROM nbgw_old
                 GROUP BY account_id ORDER BY account_id LOOP
            UPDATE access_log_counts SET entries = entries - r.n
                WHERE account_id = r.account_id;
        END LOOP;
        RETURN NULL;
    END
    $$""",
)

_PG_TRIGGERS = (
    """CREATE TRIGGER access_log_counts_insert AFTER INSERT ON access_log_entries
    REFERENCING NEW TABLE AS nbgw_new
    FOR EACH STATEMENT EXECUTE FUNCTION nbgw_access_log_counts_insert()""",
    """CREATE TRIGGER access_log_counts_delete AFTER DELETE ON access_log_entries
    REFERENCING OLD TABLE AS nbgw_old
    FOR EACH STATEMENT EXECUTE FUNCTION nbgw_access_log_counts_delete()""",
)

_BACKFILL = """
INSERT INTO access_log_counts (account_id, entries)
SELECT account_id, count(*) FROM access_log_entries
WHERE account_id IN (SELECT id FROM accounts)
GROUP BY account_id
"""


def upgrade() -> None:
    op.create_table(
        "access_log_counts",
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("account_id", name="pk_access_log_counts"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE",
                                name="fk_access_log_counts_account_id_accounts"),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        for statement in _PG_FUNCTIONS:
            op.execute(statement)
    for statement in _PG_TRIGGERS if postgres else _SQLITE_TRIGGERS:
        op.execute(statement)
    op.execute(_BACKFILL)
    op.create_index(
        "ix_access_log_entries_failed",
        "access_log_entries",
        ["account_id", "timestamp", "id"],
        postgresql_where=sa.text(FAILED),
        postgresql_include=["status_code"],
        sqlite_where=sa.text(FAILED),
    )


def downgrade() -> None:
    op.drop_index("ix_access_log_entries_failed", table_name="access_log_entries")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS access_log_counts_insert ON access_log_entries")
        op.execute("DROP TRIGGER IF EXISTS access_log_counts_delete ON access_log_entries")
        op.execute("DROP FUNCTION IF EXISTS nbgw_access_log_counts_insert()")
        op.execute("DROP FUNCTION IF EXISTS nbgw_access_log_counts_delete()")
    else:
        op.execute("DROP TRIGGER IF EXISTS access_log_counts_insert")
        op.execute("DROP TRIGGER IF EXISTS access_log_counts_delete")
    op.drop_table("access_log_counts")
