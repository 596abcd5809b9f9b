"""Store part: what the account, user, group and peer repositories share.

The checks every stored name and text goes through (no NUL, which
PostgreSQL text cannot hold; a name is required and at most
:data:`MAX_NAME` bytes), the check that ids name rows of the account
(groups, peers), the read of group memberships from either side, the name
of the ``All`` group every account has, and the account row converter
(accounts are read by the peer repository too). The database helpers run
on the connection of the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management.errors import ValidationError
from nbgateway.management.model import Account

ALL_GROUP = "All"
MAX_NAME = 255


def check_text(what: str, value: str | None) -> None:
    """NUL cannot be stored in PostgreSQL text: refuse it the same way on every backend."""
    if value is not None and "\x00" in value:
        raise ValidationError(f"{what} must not contain NUL characters")


def check_name(what: str, name: str) -> None:
    if not name or not name.strip():
        raise ValidationError(f"{what} name is required")
    check_text(f"{what} name", name)
    if len(name.encode()) > MAX_NAME:
        raise ValidationError(f"{what} name exceeds maximum length of {MAX_NAME} characters")


def row_account(r: sa.Row) -> Account:
    return Account(
        id=r.id,
        domain=r.domain,
        network_v4=r.network_v4,
        network_v6=r.network_v6 or "",
        created_at=r.created_at,
        name=r.name or "",
    )


def check_ids(
    conn: Connection, table: sa.Table, account_id: str, ids: Sequence[str], what: str
) -> None:
    """ValidationError ``<what> '<id>' not found in account`` for the first of
    ``ids`` that is not a row of ``table`` (groups, peers) in the account."""
    wanted = list(ids)
    if not wanted:
        return
    found = set(
        conn.execute(
            sa.select(table.c.id).where(
                table.c.account_id == account_id, table.c.id.in_(set(wanted))
            )
        ).scalars()
    )
    for one in wanted:
        if one not in found:
            raise ValidationError(f"{what} {one!r} not found in account")


def memberships(
    conn: Connection, key: sa.Column, other: sa.Column, ids: Sequence[str], *then: sa.Column
) -> dict[str, list[str]]:
    """``{id: [ids on the other side]}`` from ``group_peers`` for ``ids`` on the
    ``key`` side (group -> member peers, or peer -> its groups), ordered by
    ``key`` then ``then``; every id of ``ids`` is present."""
    out: dict[str, list[str]] = {one: [] for one in ids}
    if not ids:
        return out
    q = (
        sa.select(key, other)
        .where(key.in_(list(ids)))
        .order_by(key, *then)
    )
    for k, v in conn.execute(q):
        out[k].append(v)
    return out
