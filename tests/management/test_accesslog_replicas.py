"""The PostgreSQL batch insert (``NOT EXISTS`` anti-join instead of
``ON CONFLICT``, e694c43) under two management replicas (two stores on one
database) ingesting overlapping batches at once, and the batch user-group
capture when a peer is (by a stray row) a member of another account's group.

Replicas: every id is stored once, the batches' returned counts add up to the
distinct ids (a retried batch counts 0), and the per-account counters equal
the rows.  Capture: a group of another account never reaches an entry, on
the one-account and the multi-account path."""

from __future__ import annotations

import json
import threading

import pytest
import sqlalchemy as sa

from nbgateway.management.accesslogdecode import decode_batch
from nbgateway.management.model import Account, Group, Peer
from nbgateway.management.store.schema import group_peers
from tests.management.test_accesslog_ingest import counter, message, rows_of

ACCOUNTS = ("acct-a", "acct-b", "acct-c")


@pytest.fixture
def accounts(store):
    return [store.accounts.create(Account(id=a, domain=f"{a}.test")) for a in ACCOUNTS]


@pytest.mark.parametrize(
    "db_dsn", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_two_replicas_ingest_overlapping_batches_exactly(store, store_factory, accounts):
    other = store_factory()  # a second management replica on the same database
    # batches of 60 (staged path, > 16 rows), each overlapping the next by 30
    batches = [[message(ACCOUNTS[i % 3], f"r-{i:05d}") for i in range(30 * b, 30 * b + 60)]
               for b in range(12)]
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def run(replica, which):
        try:
            for b in which:
                results[b] = replica.access_logs.append_columns(decode_batch(batches[b]))
                # the same batch again, as a gateway retrying a lost answer
                assert replica.access_logs.append_columns(decode_batch(batches[b])) == 0
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(store, range(0, 12, 2))),
               threading.Thread(target=run, args=(other, range(1, 12, 2)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    distinct = 30 * 11 + 60
    assert sum(results.values()) == distinct
    rows = [r for a in ACCOUNTS for r in rows_of(store, a)]
    assert len(rows) == len({r.id for r in rows}) == distinct
    for a in ACCOUNTS:
        assert counter(store, a) == len(rows_of(store, a))


def test_a_group_of_another_account_is_never_captured(store, accounts):
    for a in ACCOUNTS:
        store.groups.create(Group(id=f"{a}-ops", account_id=a, name=f"ops-{a}"))
    peer = store.peers.create(Peer(account_id="acct-a", name="agent", key="k-a",
                                   groups=["acct-a-ops"]))
    # a stray membership row: acct-a's peer in acct-b's group
    with store._engine.begin() as conn:
        conn.execute(sa.insert(group_peers).values(group_id="acct-b-ops", peer_id=peer.id,
                                                  account_id="acct-a", position=1))
    one = [message("acct-a", f"one-{i}", user_id=peer.id) for i in range(3)]
    mixed = [message(ACCOUNTS[i % 3], f"mix-{i}", user_id=peer.id) for i in range(6)]
    assert store.access_logs.append_columns(decode_batch(one)) == 3
    assert store.access_logs.append_columns(decode_batch(mixed)) == 6
    for r in rows_of(store, "acct-a"):
        got = json.loads(r.user_groups)
        assert "ops-acct-a" in got and "ops-acct-b" not in got, (r.id, got)
    for a in ("acct-b", "acct-c"):  # the peer is not theirs: nothing captured
        for r in rows_of(store, a):
            assert r.user_groups is None, (a, r.id, r.user_groups)
