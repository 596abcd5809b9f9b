"""A group's member count, kept by the database.

Every REST peer answer carries each of the peer's groups with its
``peers_count``; counting the members at answer time read every member of the
``All`` group (it holds every peer), so each peer creation cost grew with the
account (0.5 ms at 10,000 peers, 2.8 ms at 50,000).

* ``groups.peers_count``: the number of ``group_peers`` rows of the group,
  backfilled here.
* Triggers on ``group_peers`` (insert, delete, a change of ``group_id``) keep
  it: every write path, foreign-key cascades included, and replicas still
  running the previous revision (they never read the column) keep it right,
  because the database does the counting in the writing transaction.

Both steps run in the migration's transaction: on PostgreSQL the column's
``ALTER TABLE`` locks ``groups`` until commit, so no membership written
concurrently can slip between the backfill and the triggers.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = (
    """CREATE TRIGGER group_peers_count_insert AFTER INSERT ON group_peers
    BEGIN
        UPDATE groups SET peers_count = peers_count + 1 WHERE id = NEW.group_id;
    END""",
    """CREATE TRIGGER group_peers_count_delete AFTER DELETE ON group_peers
    BEGIN
        UPDATE groups SET peers_count = peers_count - 1 WHERE id = OLD.group_id;
    END""",
    """CREATE TRIGGER group_peers_count_update AFTER UPDATE OF group_id ON group_peers
    WHEN OLD.group_id IS NOT NEW.group_id
    BEGIN
        UPDATE groups SET peers_count = peers_count - 1 WHERE id = OLD.group_id;
        UPDATE groups SET peers_count = peers_count + 1 WHERE id = NEW.group_id;
    END""",
)

# ``SET search_path FROM CURRENT``: the function resolves ``groups`` in the
# schema it was created in, whatever the writing session's search_path.
_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION nbgw_group_peers_count() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE groups SET peers_count = peers_count - 1 WHERE id = OLD.group_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE groups SET peers_count = peers_count + 1 WHERE id = NEW.group_id;
    END IF;
    RETURN NULL;
END
$$
"""

_PG_TRIGGERS = (
    """CREATE TRIGGER group_peers_count_change AFTER INSERT OR DELETE ON group_peers
    FOR EACH ROW EXECUTE FUNCTION nbgw_group_peers_count()""",
    """CREATE TRIGGER group_peers_count_update AFTER UPDATE OF group_id ON group_peers
    FOR EACH ROW WHEN (OLD.group_id IS DISTINCT FROM NEW.group_id)
    EXECUTE FUNCTION nbgw_group_peers_count()""",
)

_BACKFILL = """
UPDATE groups SET peers_count = (
    SELECT count(*) FROM group_peers WHERE group_peers.group_id = groups.id
)
"""


def upgrade() -> None:
    op.add_column(
        "groups",
        sa.Column("peers_count", sa.Integer(), nullable=False, server_default="0"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        statements = _PG_TRIGGERS
    else:
        statements = _SQLITE_TRIGGERS
    for statement in statements:
        op.execute(statement)
    op.execute(_BACKFILL)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("DROP TRIGGER IF EXISTS group_peers_count_change ON group_peers")
        op.execute("DROP TRIGGER IF EXISTS group_peers_count_update ON group_peers")
        op.execute("DROP FUNCTION IF EXISTS nbgw_group_peers_count()")
    else:
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS group_peers_count_{name}")
    # native DROP COLUMN (SQLite >= 3.35): a batch table copy would drop
    # ``groups`` and, with foreign keys on, cascade away every membership
    op.execute("ALTER TABLE groups DROP COLUMN peers_count")
