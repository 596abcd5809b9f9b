"""Store part: counting an account's rows for its quotas, inside the writing transaction.

The limits and the refusal are :mod:`nbgateway.management.quotas`; this
module only counts, on the connection of the caller's write transaction, and
hands the count to :meth:`~nbgateway.management.quotas.Quotas.check` before
the caller inserts.  Race-free because every create path runs in
``StoreBase._write(account_id, ...)``: on PostgreSQL that transaction first
takes the account's advisory transaction lock (``acct:<account id>``), so two
creates of one account run one after the other and the second one's count
(READ COMMITTED: a fresh snapshot per statement, taken after the lock was
granted) sees the first one's row; on SQLite every write holds the
process-wide write lock and ``BEGIN IMMEDIATE`` (one writer per file).
Proxy tokens are written under the installation-wide token scope, which
serialises them as well.

Every count is filtered by the account id (never another account's rows) and
uses an index on ``account_id``; the group-membership count sums the
trigger-kept ``groups.peers_count`` of the account's groups instead of
scanning ``group_peers`` (which has no account index).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management.quotas import Quotas
from nbgateway.management.store._common import ALL_GROUP
from nbgateway.management.store.schema import (
    domains,
    groups,
    peers,
    personal_access_tokens,
    proxy_access_tokens,
    services,
    users,
)

_COUNTED: dict[str, tuple[sa.Table, tuple[sa.ColumnElement[bool], ...]]] = {
    "services": (services, ()),
    "l4-services": (services, (services.c.mode != "http",)),
    "peers": (peers, ()),
    "users": (users, ()),
    "groups": (groups, ()),
    "user-tokens": (personal_access_tokens, ()),
    "proxy-tokens": (proxy_access_tokens, ()),
    "domains": (domains, ()),
}


def count(conn: Connection, name: str, account_id: str) -> int:
    """Rows of quota ``name`` the account holds now."""
    if name == "group-members":
        q = sa.select(sa.func.coalesce(sa.func.sum(groups.c.peers_count), 0)).where(
            groups.c.account_id == account_id, groups.c.name != ALL_GROUP)
        return int(conn.execute(q).scalar_one())
    table, extra = _COUNTED[name]
    q = sa.select(sa.func.count()).select_from(table).where(
        table.c.account_id == account_id, *extra)
    return int(conn.execute(q).scalar_one())


def enforce(conn: Connection, quotas: Quotas, name: str, account_id: str,
            adding: int = 1) -> None:
    """QuotaExceeded when adding ``adding`` rows of ``name`` would pass the
    account's limit (no query at all when the quota is unlimited or nothing is added)."""
    if adding <= 0 or not quotas.limit(name):
        return
    quotas.check(name, count(conn, name, account_id), adding)


def purge_dead_proxy_tokens(conn: Connection, account_id: str, now: datetime,
                            room: int) -> list[str]:
    """Delete up to ``room`` of the account's revoked or expired proxy tokens,
    oldest first (a dead token authenticates nothing; its row only kept a
    slot); the ids deleted."""
    t = proxy_access_tokens
    dead = list(conn.execute(
        sa.select(t.c.id).where(
            t.c.account_id == account_id,
            sa.or_(t.c.revoked.is_(True), sa.and_(t.c.expires_at.is_not(None),
                                                   t.c.expires_at <= now)))
        .order_by(t.c.created_at, t.c.id).limit(room)).scalars())
    if dead:
        conn.execute(sa.delete(t).where(t.c.id.in_(dead)))
    return dead
