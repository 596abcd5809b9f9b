"""Replicas on one PostgreSQL database hear each other's changes (LISTEN/NOTIFY).

Two stores on one database stand for two ``twistd nbmanagement`` processes:
a change committed through one reaches the other's listeners through the
change feed (and only once: a store's own notifications are not re-applied);
a rolled-back write announces nothing; payloads split below PostgreSQL's limit
and malformed ones are dropped; after the listening connection is lost the feed
reconnects and resynchronises.
"""

from __future__ import annotations

import threading
import time

import pytest

from nbgateway.management.errors import Conflict
from nbgateway.management.model import Account, ChangeKind, Group, Peer
from nbgateway.management.store import _changefeed


def _collect(store):  # type: ignore[no-untyped-def]
    seen: list[tuple[ChangeKind, str, tuple[str, ...]]] = []
    cond = threading.Condition()

    def listener(kind, account_id, ids):  # type: ignore[no-untyped-def]
        with cond:
            seen.append((kind, account_id, ids))
            cond.notify_all()

    store.add_listener(listener)
    return seen, cond


def _wait(cond, pred, timeout=5.0):  # type: ignore[no-untyped-def]
    with cond:
        return cond.wait_for(pred, timeout)


@pytest.mark.postgres
def test_change_through_one_replica_reaches_the_other(pg_schema_dsn):
    from nbgateway.management.store import Store

    a = Store.open(pg_schema_dsn)
    b = Store.open(pg_schema_dsn)
    try:
        feed_a, feed_b = a.start_change_feed(), b.start_change_feed()
        assert feed_a.listening.wait(10) and feed_b.listening.wait(10)
        seen_a, cond_a = _collect(a)
        seen_b, cond_b = _collect(b)
        acct = a.accounts.create(Account(id="acct-r", domain="r.test"))
        t0 = time.monotonic()
        peer = a.peers.create(Peer(account_id=acct.id, name="p", key="key-p"))
        assert _wait(cond_b, lambda: any(k == ChangeKind.PEER and peer.id in ids
                                         for k, _, ids in seen_b))
        assert time.monotonic() - t0 < 1.0
        # the writer's own listeners ran once (locally), not again through the feed
        time.sleep(0.3)
        assert [c for c in seen_a if c[0] == ChangeKind.PEER] == [
            (ChangeKind.PEER, acct.id, (peer.id,))]
        assert [c for c in seen_b if c[0] == ChangeKind.PEER] == [
            (ChangeKind.PEER, acct.id, (peer.id,))]
        # a write that fails (rolled back) announces nothing
        before = len(seen_b)
        with pytest.raises(Conflict):
            a.peers.create(Peer(account_id=acct.id, name="dup", key="key-p"))
        g = b.groups.create(Group(account_id=acct.id, name="from-b"))
        assert _wait(cond_a, lambda: any(k == ChangeKind.GROUP and g.id in ids
                                         for k, _, ids in seen_a))
        assert all(k != ChangeKind.PEER for k, _, _ in seen_b[before:])
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
def test_feed_reconnects_and_resyncs(pg_schema_dsn):
    import psycopg

    from nbgateway.management.store import Store

    a = Store.open(pg_schema_dsn)
    try:
        acct = a.accounts.create(Account(id="acct-s", domain="s.test"))
        feed = a.start_change_feed()
        assert feed.listening.wait(10)
        seen, cond = _collect(a)
        base = pg_schema_dsn.split("?")[0]
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE query LIKE 'LISTEN nbgw_changes%' AND pid <> pg_backend_pid()")
        assert _wait(cond, lambda: (ChangeKind.ACCOUNT, acct.id, ()) in seen, 15)
        assert feed.connections >= 2
    finally:
        a.close()


def test_payloads_split_below_the_limit_and_round_trip():
    ids = tuple(f"id-{i:06d}" for i in range(3000))
    changes = [(ChangeKind.SERVICE_UPDATED, "acct", ids), (ChangeKind.PEER, "acct", ("p",))]
    out = list(_changefeed.payloads("me", changes))
    assert len(out) > 1 and all(len(p.encode()) < 8000 for p in out)
    back: list[str] = []
    kinds = set()
    for p in out:
        parsed = _changefeed.parse(p)
        assert parsed is not None and parsed[0] == "me"
        for kind, account, got in parsed[1]:
            kinds.add(kind)
            assert account == "acct"
            if kind == ChangeKind.SERVICE_UPDATED:
                back += got
    assert tuple(back) == ids and kinds == {ChangeKind.SERVICE_UPDATED, ChangeKind.PEER}


@pytest.mark.parametrize("payload", [
    "", "null", "{}", '{"o": 1, "c": []}', '{"o": "x", "c": [["nope", "a", []]]}',
    '{"o": "x", "c": [["peer", "a", [1]]]}', '{"o": "x", "c": 5}', "[" * 5000,
])
def test_malformed_payloads_are_counted_and_dropped(payload):
    delivered: list[object] = []
    feed = _changefeed.ChangeFeed("", "me", delivered.append, lambda: None)
    feed.handle(payload)
    assert delivered == [] and feed.malformed == 1
    feed.handle(next(_changefeed.payloads("other", [(ChangeKind.PEER, "a", ("p",))])))
    assert delivered == [[(ChangeKind.PEER, "a", ("p",))]]
    feed.handle(next(_changefeed.payloads("me", [(ChangeKind.PEER, "a", ("p",))])))
    assert len(delivered) == 1
