"""Access log: entries per account and captured user-group set, for the group filter's total.

``GET /api/events/proxy?group_id=...`` lists the entries whose captured
``user_groups`` (the JSON array of group names written at ingestion) hold
the group's name, with the exact ``total_records``.  That count read every
entry of the account: 1.2-1.8 s at a million entries per account on
PostgreSQL (``bench/accesslog_list.py``).

``access_log_groups`` holds the number of entries per ``(account_id,
groups_key)``, ``groups_key`` being the SHA-256 of the entry's
``user_groups`` text (the set as stored, its length not bounded), with the
text beside it.  An account has few distinct sets (one per combination of
groups its users are in), so the table stays small; the list sums the rows
whose set holds the group (the same test it applies to entries) for the
total, and from that total decides whether the page is found by walking the
account's time index (``store/_accesslog_query.py``).  Entries without
groups (``user_groups`` NULL: anonymous, or a user outside the directory)
never match a group and are not counted here.

Kept like ``access_log_values`` (revision 0019): statement-level triggers
over the transition tables on PostgreSQL, one upsert per distinct key of an
insert statement in key order; a deletion subtracts per key in that order
(one ``UPDATE``, plus a ``DELETE`` when the row reaches zero); the rows go
with their account (foreign key, cascade); fill factor 50 (HOT counter
updates).  PostgreSQL only: on SQLite the table is created but stays empty,
and the list counts the entries.

``CREATE TRIGGER`` locks out writers of ``access_log_entries`` until the
migration commits, so no entry slips between the backfill and the triggers.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def _sets(table: str) -> str:
    """The (account, set) keys of *table*'s entries with their counts, in key
    order: counted per set first, then each set hashed once (hashing every
    row took about a third of the trigger's time)."""
    return f"""SELECT account_id, sha256(convert_to(user_groups, 'UTF8')) AS groups_key,
                   user_groups, n
            FROM (SELECT account_id, user_groups, count(*) AS n FROM {table}
                  WHERE user_groups IS NOT NULL GROUP BY 1, 2) s
            ORDER BY 1, 2"""


_MATCH = "account_id = r.account_id AND groups_key = r.groups_key"

_PG_FUNCTIONS = (
    f"""CREATE OR REPLACE FUNCTION nbgw_access_log_groups_insert() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO access_log_groups AS g (account_id, groups_key, user_groups, entries)
            {_sets("nbgw_new")}
            ON CONFLICT (account_id, groups_key)
            DO UPDATE SET entries = g.entries + excluded.entries;
        RETURN NULL;
    END
    $$""",
    f"""CREATE OR REPLACE FUNCTION nbgw_access_log_groups_delete() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    DECLARE
        r record;
        remaining bigint;
    BEGIN
        FOR r IN {_sets("nbgw_old")} LOOP
            UPDATE access_log_groups SET entries = entries - r.n WHERE {_MATCH}
                RETURNING entries INTO remaining;
            IF remaining <= 0 THEN
                DELETE FROM access_log_groups WHERE {_MATCH};
            END IF;
        END LOOP;
        RETURN NULL;
    END
    $$""",
)

_PG_TRIGGERS = (
    """CREATE TRIGGER access_log_groups_insert AFTER INSERT ON access_log_entries
    REFERENCING NEW TABLE AS nbgw_new
    FOR EACH STATEMENT EXECUTE FUNCTION nbgw_access_log_groups_insert()""",
    """CREATE TRIGGER access_log_groups_delete AFTER DELETE ON access_log_entries
    REFERENCING OLD TABLE AS nbgw_old
    FOR EACH STATEMENT EXECUTE FUNCTION nbgw_access_log_groups_delete()""",
)

_BACKFILL = """
INSERT INTO access_log_groups (account_id, groups_key, user_groups, entries)
SELECT account_id, sha256(convert_to(user_groups, 'UTF8')), user_groups, n
FROM (SELECT account_id, user_groups, count(*) AS n FROM access_log_entries
      WHERE user_groups IS NOT NULL AND account_id IN (SELECT id FROM accounts)
      GROUP BY 1, 2) s
"""


def upgrade() -> None:
    op.create_table(
        "access_log_groups",
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("groups_key", sa.LargeBinary(), nullable=False),
        sa.Column("user_groups", sa.Text(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "groups_key", name="pk_access_log_groups"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE",
                                name="fk_access_log_groups_account_id_accounts"),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    # room on each page for the counters' updates (HOT: no index entry per update)
    op.execute("ALTER TABLE access_log_groups SET (fillfactor = 50)")
    for statement in _PG_FUNCTIONS + _PG_TRIGGERS:
        op.execute(statement)
    op.execute(_BACKFILL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS access_log_groups_insert ON access_log_entries")
        op.execute("DROP TRIGGER IF EXISTS access_log_groups_delete ON access_log_entries")
        op.execute("DROP FUNCTION IF EXISTS nbgw_access_log_groups_insert()")
        op.execute("DROP FUNCTION IF EXISTS nbgw_access_log_groups_delete()")
    op.drop_table("access_log_groups")
