"""Keyset pages of an account's peers and services from the store (SQLite and PostgreSQL).

Pages by id cover the account exactly once, never leak another account's rows,
and a page is an index range on either database (no sort of the whole account
per page).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from nbgateway.management.model import Account, Peer
from nbgateway.management.store.schema import peers


def _walk(list_page, limit: int) -> list[str]:  # type: ignore[no-untyped-def]
    out: list[str] = []
    after = None
    while True:
        page = list_page(after=after, limit=limit)
        out += [p.id for p in page]
        if len(page) < limit:
            return out
        after = page[-1].id


def test_peer_pages_cover_the_account_once(store, account):
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    for i in range(23):
        store.peers.create(Peer(account_id=account.id, name=f"p{i}", key=f"k-{i}"))
        if i % 3 == 0:
            store.peers.create(Peer(account_id=other.id, name=f"o{i}", key=f"o-{i}"))
    whole = [p.id for p in store.peers.list(account.id)]
    for limit in (1, 5, 23, 100):
        assert _walk(lambda **kw: store.peers.list(account.id, **kw), limit) == whole
    assert store.peers.list(account.id, after=whole[-1], limit=5) == []


def _page_sql(store) -> str:  # type: ignore[no-untyped-def]
    q = (sa.select(peers).where(peers.c.account_id == "a", peers.c.id > "b")
         .order_by(peers.c.id).limit(101))
    return str(q.compile(dialect=store._engine.dialect, compile_kwargs={"literal_binds": True}))


@pytest.mark.parametrize("db_dsn", ["sqlite"], indirect=True)
def test_sqlite_page_is_an_index_range(store, account):
    with store._engine.connect() as conn:
        plan = " | ".join(str(r[-1]) for r in
                          conn.exec_driver_sql("EXPLAIN QUERY PLAN " + _page_sql(store)))
    assert "TEMP B-TREE" not in plan, plan
    assert "ix_peers_account_id_id" in plan, plan


@pytest.mark.parametrize(
    "db_dsn", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_postgresql_page_is_an_index_range(store, account):
    # an empty table would be a sequential scan either way: forbid that plan so
    # the planner shows which index it would walk, and that it needs no sort
    with store._engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        plan = " | ".join(str(r[0]) for r in
                          conn.exec_driver_sql("EXPLAIN " + _page_sql(store)))
    assert "Sort" not in plan, plan
    assert "Index Scan using ix_peers_account_id_id" in plan, plan
