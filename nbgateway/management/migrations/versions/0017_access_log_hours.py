"""Access log: entries per account, hour and service, for exact totals over time ranges.

``GET /api/events/proxy`` answers ``total_records`` exactly.  A time range
(the dashboard's "last 7 days") or a service filter made that a ``count(*)``
over every matching entry: 130-190 ms for 7 days, about 1 s for one service
of an account holding a million entries (``bench/accesslog_list.py`` on
PostgreSQL).

``access_log_hours`` holds the number of entries per ``(account_id, hour,
service_id)``, the hour being ``date_trunc('hour', timestamp)`` (timestamps
are naive UTC).  The list sums the whole hours of a range from it and counts
only the partial hours at the range's two ends in the ``(account_id,
timestamp, id)`` index.  Kept like ``access_log_counts`` (revision 0015):
statement-level triggers over the transition tables on PostgreSQL, so every
write path (batch ingestion, retention, a replica still on the previous
revision) keeps it exact in the writing transaction; one upsert per
``(account, hour, service)`` of a batch, in key order (concurrent batches
lock rows in one order); a deletion that empties a row deletes it, so the
table stays as long as the retained entries span (accounts x hours x
services).  The rows go with their account (foreign key, cascade).

PostgreSQL only: on SQLite (the small deployment's database) row-level
triggers would cost the ingesting process itself about as much as the
counter did; the table is created there but stays empty, and the list counts
the entries instead (``store/_accesslog_query.py`` checks the dialect).

On PostgreSQL ``CREATE TRIGGER`` locks out writers of ``access_log_entries``
until the migration commits, so no entry written concurrently can slip
between the backfill and the triggers (the backfill reads every entry once:
seconds at 10 million).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_PG_FUNCTIONS = (
    """CREATE OR REPLACE FUNCTION nbgw_access_log_hours_insert() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO access_log_hours AS h (account_id, hour, service_id, entries)
            SELECT account_id, date_trunc('hour', "timestamp"), service_id, count(*)
            FROM nbgw_new GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
            ON CONFLICT (account_id, hour, service_id)
            DO UPDATE SET entries = h.entries + excluded.entries;
        RETURN NULL;
    END
    $$""",
    """CREATE OR REPLACE FUNCTION nbgw_access_log_hours_delete() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    DECLARE
        r record;
    BEGIN
        FOR r IN SELECT account_id, date_trunc('hour', "timestamp") AS hour, service_id,
                        count(*) AS n
                 FROM nbgw_old GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LOOP
            DELETE FROM access_log_hours
                WHERE account_id = r.account_id AND hour = r.hour
                  AND service_id = r.service_id AND entries <= r.n;
            IF NOT FOUND THEN
                UPDATE access_log_hours SET entries = entries - r.n
                    WHERE account_id = r.account_id AND hour = r.hour
                      AND service_id = r.service_id;
            END IF;
        END LOOP;
        RETURN NULL;
    END
    $$""",
)

_PG_TRIGGERS = (
    """CREATE TRIGGER access_log_hours_insert AFTER INSERT ON access_log_entries
    REFERENCING NEW TABLE AS nbgw_new
    FOR EACH STATEMENT EXECUTE FUNCTION nbgw_access_log_hours_insert()""",
    """CREATE TRIGGER access_log_hours_delete AFTER DELETE ON access_log_entries
    REFERENCING OLD TABLE AS nbgw_old
    FOR EACH STATEMENT EXECUTE FUNCTION nbgw_access_log_hours_delete()""",
)

_BACKFILL = """
INSERT INTO access_log_hours (account_id, hour, service_id, entries)
SELECT account_id, date_trunc('hour', "timestamp"), service_id, count(*)
FROM access_log_entries
WHERE account_id IN (SELECT id FROM accounts)
GROUP BY 1, 2, 3
"""


def upgrade() -> None:
    op.create_table(
        "access_log_hours",
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("service_id", sa.String(255), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "hour", "service_id", name="pk_access_log_hours"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE",
                                name="fk_access_log_hours_account_id_accounts"),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in _PG_FUNCTIONS + _PG_TRIGGERS:
        op.execute(statement)
    op.execute(_BACKFILL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS access_log_hours_insert ON access_log_entries")
        op.execute("DROP TRIGGER IF EXISTS access_log_hours_delete ON access_log_entries")
        op.execute("DROP FUNCTION IF EXISTS nbgw_access_log_hours_insert()")
        op.execute("DROP FUNCTION IF EXISTS nbgw_access_log_hours_delete()")
    op.drop_table("access_log_hours")
