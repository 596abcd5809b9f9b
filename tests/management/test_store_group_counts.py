"""``groups.peers_count`` is kept by the database (migration 0014) on every
write path, foreign-key cascades included, on SQLite and PostgreSQL: after each
step of a busy history it equals a real count of the group's members, and the
REST summaries read it instead of counting."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from nbgateway.management import migrations
from nbgateway.management.model import Account, Group, Peer
from nbgateway.management.store import Store
from nbgateway.management.store._base import StoreBase, normalise_dsn
from nbgateway.management.store.schema import group_peers, groups


def key(i: int) -> str:
    return f"count-key-{i:04d}".ljust(44, "=")[:44]


def kept_and_real(store: Store) -> tuple[dict[str, int], dict[str, int]]:
    """(the kept counts, the counted members) of every group in the database."""
    with store._read() as conn:
        kept = dict(conn.execute(sa.select(groups.c.id, groups.c.peers_count)).all())
        real = dict.fromkeys(kept, 0)
        real.update(
            conn.execute(
                sa.select(group_peers.c.group_id, sa.func.count()).group_by(group_peers.c.group_id)
            ).all()
        )
    return kept, real


def assert_counts_true(store: Store) -> dict[str, int]:
    kept, real = kept_and_real(store)
    assert kept == real
    return kept


def test_every_write_path_keeps_the_count(store, account):
    ops = store.groups.create(Group(account_id=account.id, name="ops"))
    dev = store.groups.create(Group(account_id=account.id, name="dev"))
    made = [
        store.peers.create(Peer(account_id=account.id, name=f"p{i}", key=key(i),
                                groups=(ops.id,) if i % 2 else (ops.id, dev.id)))
        for i in range(6)
    ]
    counts = assert_counts_true(store)
    assert counts[ops.id] == 6 and counts[dev.id] == 3

    # the REST answer of a creation reads the kept counts
    _peer, summary = store.peers.create_with_groups(
        Peer(account_id=account.id, name="p6", key=key(6), groups=(dev.id,)))
    assert summary[dev.id] == ("dev", 4)
    assert_counts_true(store)

    # a peer's groups changed (one left, one joined)
    store.peers.update(dataclasses.replace(made[1], groups=(dev.id,)))
    counts = assert_counts_true(store)
    assert counts[ops.id] == 5 and counts[dev.id] == 5

    # group membership edits: add (idempotent), remove (missing ignored), full replace
    store.groups.add_peers(account.id, dev.id, [made[3].id, made[3].id, made[0].id])
    store.groups.remove_peers(account.id, ops.id, [made[0].id, "no-such-peer"])
    assert_counts_true(store)
    store.groups.update(dataclasses.replace(store.groups.get(account.id, ops.id),
                                            peers=(made[2].id, made[4].id)))
    counts = assert_counts_true(store)
    assert counts[ops.id] == 2

    # a peer deleted: every group it was in loses one
    before = counts[dev.id]
    store.peers.delete(account.id, made[4].id)
    counts = assert_counts_true(store)
    assert counts[dev.id] == before - 1 and counts[ops.id] == 1

    # the summaries (few ids: prepared; many: one query) agree with the counts
    all_ids = sorted(counts)
    assert {gid: n for gid, (_name, n) in store.groups.summaries(account.id).items()} == counts
    assert store.groups.summaries(account.id, [ops.id]) == {ops.id: ("ops", 1)}
    assert len(store.groups.summaries(account.id, [*all_ids, "a", "b", "c"])) == len(all_ids)

    # a group deleted (its memberships cascade) and the account deleted
    store.groups.delete(account.id, ops.id)
    assert_counts_true(store)
    store.accounts.delete(account.id)
    assert kept_and_real(store) == ({}, {})


def test_one_account_never_moves_another_accounts_counts(store, account):
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    mine = store.groups.create(Group(account_id=account.id, name="mine"))
    theirs = store.groups.create(Group(account_id=other.id, name="mine"))
    for i in range(3):
        store.peers.create(Peer(account_id=other.id, name=f"t{i}", key=key(100 + i),
                                groups=(theirs.id,)))
    store.peers.create(Peer(account_id=account.id, name="m", key=key(200), groups=(mine.id,)))
    counts = assert_counts_true(store)
    assert counts[theirs.id] == 3 and counts[mine.id] == 1
    # another account's group id is refused, and leaves its count alone
    with pytest.raises(Exception, match="not found"):
        store.peers.create(Peer(account_id=account.id, name="x", key=key(201),
                                groups=(theirs.id,)))
    assert store.groups.summaries(account.id, [theirs.id]) == {}
    store.accounts.delete(account.id)
    counts = assert_counts_true(store)
    assert counts[theirs.id] == 3


def test_a_peer_creation_does_not_read_the_members(store, account):
    """The REST answer's member count is one read of the group row: no
    statement of a creation counts or scans ``group_peers``."""
    g = store.groups.create(Group(account_id=account.id, name="storm"))
    for i in range(30):
        store.peers.create(Peer(account_id=account.id, name=f"s{i}", key=key(300 + i),
                                groups=(g.id,)))
    seen: list[str] = []

    def record(conn, cursor, statement, params, context, executemany):
        seen.append(statement)

    event.listen(store._engine, "before_cursor_execute", record)
    try:
        _peer, summary = store.peers.create_with_groups(
            Peer(account_id=account.id, name="s30", key=key(330), groups=(g.id,)))
    finally:
        event.remove(store._engine, "before_cursor_execute", record)
    assert summary[g.id] == ("storm", 31)
    assert not [s for s in seen if "count(" in s.lower()], seen


def add_member(conn: sa.Connection, group_id: str, peer_id: str, position: int) -> None:
    conn.execute(sa.text(
        "INSERT INTO group_peers (group_id, peer_id, account_id, position) "
        "VALUES (:g, :p, 'acct-1', :i)"), {"g": group_id, "p": peer_id, "i": position})


def counts(conn: sa.Connection) -> dict[str, int]:
    return dict(conn.execute(sa.text("SELECT id, peers_count FROM groups")).all())


def test_upgrade_backfills_the_counts_of_an_existing_database(db_dsn):
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0013")
            conn.execute(sa.text(
                "INSERT INTO accounts (id, domain, network_v4, network_v6) "
                "VALUES ('acct-1', 'd.test', '100.64.0.0/10', 'fd00::/64')"))
            for gid in ("g-big", "g-one", "g-none"):
                conn.execute(sa.text(
                    "INSERT INTO groups (id, account_id, name, issued) "
                    "VALUES (:g, 'acct-1', :n, 'api')"), {"g": gid, "n": gid})
            for i in range(5):
                conn.execute(sa.text(
                    "INSERT INTO peers (id, account_id, name, key, ip, dns_label, "
                    "proxy_meta_embedded, proxy_meta_cluster, peer_status_connected, ephemeral) "
                    "VALUES (:p, 'acct-1', :n, :k, :ip, :d, false, '', false, false)"),
                    {"p": f"p{i}", "n": f"p{i}", "d": f"p{i}", "k": key(i),
                     "ip": f"100.64.0.{i + 1}"})
                add_member(conn, "g-big", f"p{i}", i)
            add_member(conn, "g-one", "p0", 0)
            conn.commit()
            migrations.upgrade(conn, "0014")
            assert counts(conn) == {"g-big": 5, "g-one": 1, "g-none": 0}
            # the triggers run from here on, also for a cascade from peers
            conn.execute(sa.text("DELETE FROM peers WHERE id = 'p0'"))
            conn.commit()
            assert counts(conn) == {"g-big": 4, "g-one": 0, "g-none": 0}
            # down and up again: the column and triggers go and come back, the
            # memberships stay, and the backfill counts them again
            migrations.downgrade(conn, "0013")
            assert "peers_count" not in {
                c["name"] for c in sa.inspect(conn).get_columns("groups")}
            assert conn.execute(sa.text("SELECT count(*) FROM group_peers")).scalar_one() == 4
            add_member(conn, "g-none", "p1", 0)
            conn.commit()
            migrations.upgrade(conn, "head")
            assert counts(conn) == {"g-big": 4, "g-one": 0, "g-none": 1}
    finally:
        engine.dispose()
