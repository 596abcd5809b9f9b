"""Access log, PostgreSQL: drop two indexes no query reads; the values triggers hash per key.

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

And the triggers of ``access_log_values`` (revision 0019) count an insert's
or a deletion's entries per key first and hash each key's host once, instead
of hashing every entry's host (the SHA-256 per row was about a sixth of the
insert trigger's time with 10 accounts per statement, a third with one).
Same keys, same order (the key order the upserts and the deleting loop take
their rows in), same counts.

Both pay for part of revisions 0023 and 0024's write cost
(docs/management.md).  The downgrade builds the indexes again and restores
revision 0019's functions.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

_INDEXES = (("ix_access_log_entries_service_id", "service_id"),
            ("ix_access_log_entries_timestamp", "timestamp"))


#: ``access_log_values``' key columns of an entry, before the host is hashed
_COLUMNS = """account_id, service_id, host, method, status_code,
                         (status_code >= 400 OR reason <> '') AS failed"""


def _keys(table: str) -> str:
    """*table*'s entries counted per ``access_log_values`` key, in key order,
    each key's host hashed once."""
    return f"""SELECT account_id, service_id, sha256(convert_to(host, 'UTF8')) AS host_key,
                   method, status_code, failed, host, n
            FROM (SELECT {_COLUMNS}, count(*) AS n
                  FROM {table} GROUP BY 1, 2, 3, 4, 5, 6) s
            ORDER BY 1, 2, 3, 4, 5, 6"""


_MATCH = """account_id = r.account_id AND service_id = r.service_id
                  AND host_key = r.host_key AND method = r.method
                  AND status_code = r.status_code AND failed = r.failed"""

_PG_FUNCTIONS = (
    f"""CREATE OR REPLACE FUNCTION nbgw_access_log_values_insert() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        INSERT INTO access_log_values AS v
                (account_id, service_id, host_key, method, status_code, failed, host, entries)
            {_keys("nbgw_new")}
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
        FOR r IN {_keys("nbgw_old")} LOOP
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


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _ in _INDEXES:
        op.drop_index(name, table_name="access_log_entries")
    for statement in _PG_FUNCTIONS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in importlib.import_module(
            "nbgateway.management.migrations.versions.0019_access_log_values")._PG_FUNCTIONS:
        op.execute(statement)
    for name, column in _INDEXES:
        op.create_index(name, "access_log_entries", [column])
