"""Access log: entries per account and low-cardinality values, for exact totals and sorts.

``GET /api/events/proxy`` answers ``total_records`` exactly.  A filter on
``method``, ``status_code`` or a ``host`` substring (alone or with a service
and ``status``) was a ``count(*)`` over every matching entry of the account,
and a sort by ``status_code`` or ``method`` a top-N sort of the account's
every entry: 2-4 s at a million entries per account
(``bench/accesslog_list.py`` on PostgreSQL).

``access_log_values`` holds the number of entries per ``(account_id,
service_id, host, method, status_code, failed)``, ``failed`` being the
list's ``status=failed`` condition (``status_code >= 400 OR reason <>
''``).  The key holds ``host_key`` (the SHA-256 of the host's UTF-8 bytes)
instead of the host itself, whose length is not bounded, and ``host`` beside
it.  These columns take few values per account (a service has one or a few
hosts, a handful of methods and status codes), so the table stays small;
the list sums it for a total and, for a sort by one of the columns, to find
which value(s) a page's offset falls in (``store/_accesslog_query.py``).

Kept like ``access_log_hours`` (revision 0017): statement-level triggers
over the transition tables on PostgreSQL, one upsert per distinct key of a
statement in key order; a deletion subtracts per key in that order too (one
``UPDATE``, plus a ``DELETE`` when the row reaches zero: each an index
probe, whatever the table's size); the rows go with their account (foreign
key, cascade).  Fill factor 50, so a
counter's update usually stays on its page (HOT).  PostgreSQL only: on SQLite the
table is created but stays empty, and the list counts the entries.

``CREATE TRIGGER`` locks out writers of ``access_log_entries`` until the
migration commits, so no entry slips between the backfill and the triggers.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

#: the key of one entry, as selected from the entries (or a transition table)
_KEY = """account_id, service_id, sha256(convert_to(host, 'UTF8')) AS host_key, method,
          status_code, (status_code >= 400 OR reason <> '') AS failed"""

#: the deleted entries' keys and counts
_GONE = f"SELECT {_KEY}, count(*) AS n FROM nbgw_old GROUP BY 1, 2, 3, 4, 5, 6"

_MATCH = """account_id = r.account_id AND service_id = r.service_id
                  AND host_key = r.host_key AND method = r.method
                  AND status_code = r.status_code AND failed = r.failed"""

_PG_FUNCTIONS = (
    f"""CREATE OR REPLACE FUNCTION nbgw_access_log_values_insert() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO access_log_values AS v
                (account_id, service_id, host_key, method, status_code, failed, host, entries)
            SELECT {_KEY}, min(host), count(*)
            FROM nbgw_new GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
            ON CONFLICT (account_id, service_id, host_key, method, status_code, failed)
            DO UPDATE SET entries = v.entries + excluded.entries;
        RETURN NULL;
    END
    $$""",
    f"""CREATE OR REPLACE FUNCTION nbgw_access_log_values_delete() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    DECLARE
        r record;
        remaining bigint;
    BEGIN
        FOR r IN {_GONE} ORDER BY 1, 2, 3, 4, 5, 6 LOOP
            UPDATE access_log_values SET entries = entries - r.n WHERE {_MATCH}
                RETURNING entries INTO remaining;
            IF remaining <= 0 THEN
                DELETE FROM access_log_values WHERE {_MATCH};
            END IF;
        END LOOP;
        RETURN NULL;
    END
    $$""",
)

_PG_TRIGGERS = (
    """CREATE TRIGGER access_log_values_insert AFTER INSERT ON access_log_entries
    REFERENCING NEW TABLE AS nbgw_new
    FOR EACH STATEMENT EXECUTE FUNCTION nbgw_access_log_values_insert()""",
    """CREATE TRIGGER access_log_values_delete AFTER DELETE ON access_log_entries
    REFERENCING OLD TABLE AS nbgw_old
    FOR EACH STATEMENT EXECUTE FUNCTION nbgw_access_log_values_delete()""",
)

_BACKFILL = f"""
INSERT INTO access_log_values
    (account_id, service_id, host_key, method, status_code, failed, host, entries)
SELECT {_KEY}, min(host), count(*)
FROM access_log_entries
WHERE account_id IN (SELECT id FROM accounts)
GROUP BY 1, 2, 3, 4, 5, 6
"""


def upgrade() -> None:
    op.create_table(
        "access_log_values",
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("service_id", sa.String(255), nullable=False),
        sa.Column("host_key", sa.LargeBinary(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "service_id", "host_key", "method", "status_code",
                                "failed", name="pk_access_log_values"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE",
                                name="fk_access_log_values_account_id_accounts"),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    # room on each page for the counters' updates (HOT: no index entry per update)
    op.execute("ALTER TABLE access_log_values SET (fillfactor = 50)")
    for statement in _PG_FUNCTIONS + _PG_TRIGGERS:
        op.execute(statement)
    op.execute(_BACKFILL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS access_log_values_insert ON access_log_entries")
        op.execute("DROP TRIGGER IF EXISTS access_log_values_delete ON access_log_entries")
        op.execute("DROP FUNCTION IF EXISTS nbgw_access_log_values_insert()")
        op.execute("DROP FUNCTION IF EXISTS nbgw_access_log_values_delete()")
    op.drop_table("access_log_values")
