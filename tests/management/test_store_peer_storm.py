"""Peer storms on the management store (SQLite and PostgreSQL): a peer creation
is a fixed, small number of prepared statements whatever the account's size,
answers its groups' member counts from the same transaction, and resolved
API tokens are reused until a user/token/account change or a short TTL."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from nbgateway.management.errors import Unauthenticated, ValidationError
from nbgateway.management.model import Group, Peer, User
from nbgateway.management.store import _users
from nbgateway.management.store._prepared import Prepared
from nbgateway.management.store.schema import peers, personal_access_tokens, users


def key(i: int) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(f"storm-{i}".encode()).digest()).decode()


class Statements:
    def __init__(self, engine):
        self.engine, self.seen = engine, []
        event.listen(engine, "before_cursor_execute", self.record)

    def record(self, conn, cursor, statement, params, context, executemany):
        self.seen.append(statement)

    def close(self):
        event.remove(self.engine, "before_cursor_execute", self.record)


def test_a_peer_creation_is_a_fixed_number_of_statements(store, account):
    g = store.groups.create(Group(account_id=account.id, name="storm"))
    for i in range(60):
        store.peers.create(Peer(account_id=account.id, name=f"p{i}", key=key(i), groups=(g.id,)))
    counted = Statements(store._engine)
    try:
        counts = []
        for i in range(60, 70):
            counted.seen.clear()
            store.peers.create(Peer(account_id=account.id, name=f"p{i}", key=key(i),
                                    groups=(g.id,)))
            counts.append(len([s for s in counted.seen if not s.startswith(("BEGIN", "COMMIT"))
                               and "pg_advisory" not in s and "pg_notify" not in s]))
    finally:
        counted.close()
    # account + All, key, group check, IPv4 probe, IPv6 probe, insert, 2 memberships
    assert max(counts) <= 8, counts
    listed = store.peers.list(account.id)
    assert len(listed) == 70
    assert len({p.ip for p in listed}) == 70 and len({p.ipv6 for p in listed}) == 70
    members = {gr.name: gr.peers for gr in store.groups.list(account.id)}
    assert len(members["storm"]) == 70 and len(members["All"]) == 70


def test_create_with_groups_counts_members_in_the_same_transaction(store, account):
    g = store.groups.create(Group(account_id=account.id, name="ops"))
    store.peers.create(Peer(account_id=account.id, name="a", key=key(1), groups=(g.id,)))
    peer, groups = store.peers.create_with_groups(
        Peer(account_id=account.id, name="b", key=key(2), groups=(g.id,)))
    assert groups == store.groups.summaries(account.id, list(peer.groups))
    assert groups[g.id] == ("ops", 2)
    with pytest.raises(ValidationError, match="group 'nope' not found"):
        store.peers.create_with_groups(
            Peer(account_id=account.id, name="c", key=key(3), groups=("nope",)))
    with pytest.raises(ValidationError, match="maximum length"):
        store.peers.create(Peer(account_id=account.id, name="d", key="k" * 300))
    assert len(store.peers.list(account.id)) == 2


def test_prepared_statements_take_only_named_parameters():
    stmt = Prepared(sa.select(peers.c.id).where(peers.c.ip == "100.64.0.1"))

    class Conn:
        dialect = sa.create_engine("sqlite://").dialect

    with pytest.raises(ValueError, match="literal parameter"):
        stmt.compiled(Conn())


def test_token_cache_follows_changes(store, account):
    u = store.users.create(User(id="erin", account_id=account.id, role="admin"))
    pat, plain = store.users.create_token(account.id, "erin", "laptop")
    assert store.users.authenticate_token(plain)[0].role == "admin"
    reads = Statements(store._engine)
    try:
        for _ in range(5):
            assert store.users.authenticate_token(plain)[0].id == "erin"
        assert reads.seen == []  # served from the cache
    finally:
        reads.close()
    store.users.update(dataclasses.replace(u, role="user"))
    assert store.users.authenticate_token(plain)[0].role == "user"
    store.users.update(dataclasses.replace(u, role="user", blocked=True))
    with pytest.raises(Unauthenticated):
        store.users.authenticate_token(plain)
    store.users.update(dataclasses.replace(u, role="user", blocked=False))
    assert store.users.authenticate_token(plain)[0].id == "erin"
    store.users.delete_token(account.id, "erin", pat.id)
    with pytest.raises(Unauthenticated, match="invalid token"):
        store.users.authenticate_token(plain)


def test_an_unannounced_change_is_seen_after_the_ttl(store, account, monkeypatch):
    store.users.create(User(id="erin", account_id=account.id, role="admin"))
    _, plain = store.users.create_token(account.id, "erin", "laptop")
    now = [1000.0]
    monkeypatch.setattr(_users.time, "monotonic", lambda: now[0])
    store.users.authenticate_token(plain)
    # a write no listener hears of (another process on the same SQLite file)
    with store._engine.begin() as conn:
        conn.execute(sa.update(users).where(users.c.id == "erin").values(blocked=True))
    store.users.authenticate_token(plain)  # still cached
    now[0] += store.users.AUTH_CACHE_SECONDS + 0.1
    with pytest.raises(Unauthenticated):
        store.users.authenticate_token(plain)


def test_a_lookup_that_races_a_change_is_not_cached(store, account, monkeypatch):
    store.users.create(User(id="erin", account_id=account.id, role="admin"))
    _, plain = store.users.create_token(account.id, "erin", "laptop")
    repo = store.users
    original = repo._authenticate_uncached

    def racing(hashed, now):
        found = original(hashed, now)
        # the token is revoked after this lookup read it, before it is cached
        with store._engine.begin() as conn:
            conn.execute(sa.delete(personal_access_tokens))
        repo._auth_changed(_users.ChangeKind.PERSONAL_ACCESS_TOKEN, account.id, ())
        return found

    repo._auth_cache().clear()
    monkeypatch.setattr(repo, "_authenticate_uncached", racing)
    repo.authenticate_token(plain)
    monkeypatch.setattr(repo, "_authenticate_uncached", original)
    with pytest.raises(Unauthenticated, match="invalid token"):
        repo.authenticate_token(plain)


def test_summaries_of_a_few_groups_match_the_general_query(store, account):
    made = [store.groups.create(Group(account_id=account.id, name=f"g{i}")) for i in range(6)]
    for i in range(8):
        store.peers.create(Peer(account_id=account.id, name=f"p{i}", key=key(100 + i),
                                groups=tuple(g.id for g in made[: i % 6 + 1])))
    ids = [g.id for g in made]
    everything = store.groups.summaries(account.id, [*ids, "missing"])  # > 4: one query
    assert len(everything) == 6 and everything[made[0].id] == ("g0", 8)
    for few in (ids[:1], ids[2:4], [ids[5], "missing", ids[5]]):
        assert store.groups.summaries(account.id, few) == {
            gid: everything[gid] for gid in few if gid in everything}
    other = store.accounts.create(dataclasses.replace(account, id="acct-2", network_v6=""))
    assert store.groups.summaries(other.id, ids[:2]) == {}  # another account's groups
