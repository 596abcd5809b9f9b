"""Access log: the per-set counts of ``access_log_groups`` kept per hour too.

``GET /api/events/proxy?group_id=...&start_date=...`` (a group over the
dashboard's "last day" or "last 7 days") counted its exact total entry by
entry: a bitmap heap scan of the range's entries, 22 ms for a day and
388 ms for 7 days at a million entries per account (EXPLAIN, warm;
``bench/accesslog_list.py``).  Revision 0023's ``access_log_groups`` holds
the entries per ``(account_id, groups_key)`` and answers only the group
alone.

This revision keys it by ``(account_id, hour, groups_key)``, the hour being
``date_trunc('hour', timestamp)`` as in ``access_log_hours`` (revision
0017).  A group's total over a time range sums the whole hours whose set
holds the group and counts only the two partial hours at the ends in the
``(account_id, timestamp, id)`` index; the group alone sums every hour.
A batch lies within one or two hours, so an insert statement has as many
keys as before: kept the same way (statement-level triggers over the
transition tables, one upsert per distinct key in key order, each key's
set hashed once; a deletion subtracts per key in that order and deletes a
row that reaches zero; fill factor 50; the rows go with their account).
Measured as a trigger at 10 million entries, writing per hour instead of
per set cost nothing measurable at ingestion (docs/management.md).

PostgreSQL: the triggers are dropped (which locks out writers of
``access_log_entries`` until the migration commits), the table is created
again with the hour and backfilled from the entries, and the triggers come
back with the new functions.  SQLite: the table is created again in the new
form and stays empty, as before.  The downgrade restores revision 0023's
table, functions and triggers (backfilled again).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def _keys(table: str, where: str = "") -> str:
    """The (account, hour, set) keys of *table*'s entries (those with groups,
    and *where*) with their counts, in key order: counted per key first,
    then each key's set hashed once."""
    return f"""SELECT account_id, hour, sha256(convert_to(user_groups, 'UTF8')) AS groups_key,
                   user_groups, n
            FROM (SELECT account_id, date_trunc('hour', "timestamp") AS hour, user_groups,
                         count(*) AS n
                  FROM {table} WHERE user_groups IS NOT NULL{where} GROUP BY 1, 2, 3) s
            ORDER BY 1, 2, 3"""


_MATCH = "account_id = r.account_id AND hour = r.hour AND groups_key = r.groups_key"

_PG_FUNCTIONS = (
    f"""CREATE OR REPLACE FUNCTION nbgw_access_log_groups_insert() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO access_log_groups AS g (account_id, hour, groups_key, user_groups, entries)
            {_keys("nbgw_new")}
            ON CONFLICT (account_id, hour, groups_key)
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
        FOR r IN {_keys("nbgw_old")} LOOP
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

_BACKFILL = f"""
INSERT INTO access_log_groups (account_id, hour, groups_key, user_groups, entries)
{_keys("access_log_entries", " AND account_id IN (SELECT id FROM accounts)")}
"""

_TRIGGERS = ("access_log_groups_insert", "access_log_groups_delete")


def _revision_0023():  # type: ignore[no-untyped-def]
    return importlib.import_module(
        "nbgateway.management.migrations.versions.0023_access_log_groups")


def _drop_triggers() -> None:
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON access_log_entries")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        _drop_triggers()  # writers wait from here until the commit
    op.drop_table("access_log_groups")
    op.create_table(
        "access_log_groups",
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("groups_key", sa.LargeBinary(), nullable=False),
        sa.Column("user_groups", sa.Text(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "hour", "groups_key",
                                name="pk_access_log_groups"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE",
                                name="fk_access_log_groups_account_id_accounts"),
    )
    if not postgres:
        return
    op.execute("ALTER TABLE access_log_groups SET (fillfactor = 50)")
    for statement in _PG_FUNCTIONS + _revision_0023()._PG_TRIGGERS:
        op.execute(statement)
    op.execute(_BACKFILL)


def downgrade() -> None:
    old = _revision_0023()
    old.downgrade()  # triggers, functions and table
    old.upgrade()  # 0023's table, functions, triggers and backfill
