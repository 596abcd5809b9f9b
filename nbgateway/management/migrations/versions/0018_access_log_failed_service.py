"""Access log, PostgreSQL: the failures index carries the service too.

``ix_access_log_entries_failed`` (revision 0015) holds ``(account_id,
timestamp, id)`` of the failed entries with ``status_code`` included.  A
service's ``status=success`` total is the service's entries
(``access_log_hours``, revision 0017) minus its failures, and counting
those fetched every failed entry of the account from the table to read its
``service_id`` (about 360 ms at a million entries per account,
``bench/accesslog_list.py``).  With ``service_id`` included the count is
read from the index alone; only failed entries (a few %) are in the index,
so ingestion pays a few bytes per failure.

Rebuilt under the same name in the migration's transaction: writers of
``access_log_entries`` wait for the build (a few seconds at 10 million
entries).  SQLite keeps the index of 0015 (it has no included columns).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

FAILED = "status_code >= 400 OR reason <> ''"


def _rebuild(include: list[str]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_access_log_entries_failed", table_name="access_log_entries")
    op.create_index(
        "ix_access_log_entries_failed",
        "access_log_entries",
        ["account_id", "timestamp", "id"],
        postgresql_where=sa.text(FAILED),
        postgresql_include=include,
    )


def upgrade() -> None:
    _rebuild(["status_code", "service_id"])


def downgrade() -> None:
    _rebuild(["status_code"])
