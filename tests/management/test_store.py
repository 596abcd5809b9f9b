"""Store CRUD for accounts, users, groups, peers, PATs and listeners (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from nbgateway.management.errors import (
    AddressExhausted,
    BadRequest,
    Conflict,
    GroupInUse,
    NotFound,
    Unauthenticated,
    ValidationError,
)
from nbgateway.management.model import (
    Account,
    AuthConfig,
    BearerAuth,
    ChangeKind,
    Group,
    Peer,
    Service,
    Target,
    TargetOptions,
    User,
)

EVIL = "x'); DROP TABLE groups; -- \" % _ \\ ;"


def private_service(account_id: str, groups: tuple[str, ...], **kw) -> Service:
    base = dict(
        account_id=account_id,
        name="myapp",
        domain="myapp.eu.proxy.netbird.io",
        private=True,
        access_groups=groups,
        targets=(
            Target(
                target_type="cluster",
                target_id="eu.proxy.netbird.io",
                host="backend.lan",
                port=8080,
                options=TargetOptions(direct_upstream=True),
            ),
        ),
    )
    base.update(kw)
    return Service(**base)


# --- accounts and bootstrap --------------------------------------------------------------


def test_bootstrap_returns_admin_token_exactly_once(store):
    first = store.accounts.ensure_default()
    assert first.admin_token and first.admin_token.startswith("nbp_")
    assert len(first.admin_token) == 40
    assert first.admin_user.role == "owner"
    second = store.accounts.ensure_default()
    assert second.admin_token is None
    assert second.account == first.account and second.admin_user.id == first.admin_user.id
    user, pat = store.users.authenticate_token(first.admin_token)
    assert user.id == first.admin_user.id and pat.account_id == first.account.id
    # only the hash is stored
    assert pat.hashed_token != first.admin_token
    assert [g.name for g in store.groups.list(first.account.id)] == ["All"]


def test_account_crud(store):
    a = store.accounts.create(Account(domain="example.test"))
    assert len(a.id) == 20 and a.network_v4 == "100.64.0.0/10"
    net6 = ipaddress.IPv6Network(a.network_v6)
    assert net6.prefixlen == 64 and net6.network_address.packed[0] == 0xFD
    assert store.accounts.get(a.id) == a
    assert a in store.accounts.list()
    first = store.accounts.ensure_default().account
    assert store.accounts.list()[-1] == first  # creation order, not id order
    with pytest.raises(Conflict):
        store.accounts.create(Account(id=a.id))
    with pytest.raises(NotFound, match="account not found"):
        store.accounts.get("nope")
    with pytest.raises(ValidationError):
        store.accounts.create(Account(network_v4="10.0.0.1/8"))


# --- users --------------------------------------------------------------------------------


def test_user_crud(store, account):
    g = store.groups.create(Group(account_id=account.id, name="admins"))
    u = store.users.create(
        User(id="alice", account_id=account.id, email="alice@example.com", auto_groups=[g.id])
    )
    assert store.users.get(account.id, "alice") == u
    assert store.users.find("alice") == u
    assert store.users.list(account.id) == [u]
    u2 = store.users.update(dataclasses.replace(u, name="Alice", blocked=True))
    assert u2.name == "Alice" and u2.status == "blocked" and u2.created_at == u.created_at
    pending = store.users.update(dataclasses.replace(u2, pending_approval=True))
    assert pending.blocked and pending.pending_approval and pending.status == "pending"
    with pytest.raises(Conflict):
        store.users.create(User(id="alice", account_id=account.id))
    other = store.accounts.create(Account(id="acct-2"))
    with pytest.raises(NotFound, match="user not found"):
        store.users.get(other.id, "alice")
    store.users.delete(account.id, "alice")
    with pytest.raises(NotFound):
        store.users.get(account.id, "alice")
    with pytest.raises(NotFound):
        store.users.delete(account.id, "alice")


def test_user_unknown_auto_group_rejected_and_nothing_stored(store, account):
    with pytest.raises(ValidationError, match="auto group 'ghost' not found"):
        store.users.create(User(id="bob", account_id=account.id, auto_groups=["ghost"]))
    assert store.users.list(account.id) == []


def test_user_bad_role(store, account):
    with pytest.raises(ValidationError, match="invalid user role"):
        store.users.create(User(account_id=account.id, role="god"))


def test_delete_user_removes_tokens_and_peers(store, account):
    store.users.create(User(id="carol", account_id=account.id, role="admin"))
    _, plain = store.users.create_token(account.id, "carol", "cli")
    p = store.peers.create(
        Peer(account_id=account.id, name="laptop", key="k-carol", user_id="carol")
    )
    other = store.peers.create(Peer(account_id=account.id, name="server", key="k-server"))
    store.users.delete(account.id, "carol")
    with pytest.raises(Unauthenticated):
        store.users.authenticate_token(plain)
    # a peer of nobody would keep its groups' access (review 18): it goes with its owner
    with pytest.raises(NotFound):
        store.peers.get(account.id, p.id)
    assert store.peers.get(account.id, other.id) == other


# --- groups -------------------------------------------------------------------------------


def test_group_crud_and_membership(store, account):
    p1 = store.peers.create(Peer(account_id=account.id, name="p1", key="k1"))
    p2 = store.peers.create(Peer(account_id=account.id, name="p2", key="k2"))
    g = store.groups.create(Group(account_id=account.id, name="ops", peers=[p2.id, p1.id]))
    assert g.peers == (p2.id, p1.id)
    assert store.groups.get(account.id, g.id) == g
    g = store.groups.remove_peers(account.id, g.id, [p2.id, "not-a-member"])
    assert g.peers == (p1.id,)
    g = store.groups.add_peers(account.id, g.id, [p2.id, p1.id])
    assert g.peers == (p1.id, p2.id)
    g = store.groups.update(dataclasses.replace(g, name="operators", peers=[p2.id]))
    assert (g.name, g.peers) == ("operators", (p2.id,))
    assert g.id in store.peers.get(account.id, p2.id).groups
    assert g.id not in store.peers.get(account.id, p1.id).groups
    assert {x.name for x in store.groups.list(account.id)} == {"All", "operators"}
    store.groups.delete(account.id, g.id)
    with pytest.raises(NotFound, match="group not found"):
        store.groups.get(account.id, g.id)


def test_group_name_conflict_and_validation(store, account):
    store.groups.create(Group(account_id=account.id, name="ops"))
    with pytest.raises(Conflict, match="already exists"):
        store.groups.create(Group(account_id=account.id, name="ops"))
    with pytest.raises(ValidationError, match="group name is required"):
        store.groups.create(Group(account_id=account.id, name=" "))
    with pytest.raises(ValidationError, match="peer 'ghost' not found"):
        store.groups.create(Group(account_id=account.id, name="x", peers=["ghost"]))
    assert {g.name for g in store.groups.list(account.id)} == {"All", "ops"}


def test_group_of_other_account_is_not_found(store, account):
    other = store.accounts.create(Account(id="acct-2"))
    g = store.groups.create(Group(account_id=other.id, name="theirs"))
    with pytest.raises(NotFound):
        store.groups.get(account.id, g.id)
    with pytest.raises(NotFound):
        store.groups.delete(account.id, g.id)
    assert store.groups.resolve(account.id, [g.id]) == []


def test_resolve_groups_keeps_order_and_skips_unknown(store, account):
    a = store.groups.create(Group(id="grp-a", account_id=account.id, name="a"))
    b = store.groups.create(Group(id="grp-b", account_id=account.id, name="b"))
    out = store.groups.resolve(account.id, ["grp-b", "ghost", "grp-a"])
    assert [g.id for g in out] == [b.id, a.id]
    assert [g.name for g in out] == ["b", "a"]


def test_all_group_cannot_be_deleted_or_renamed(store, account):
    all_group = store.groups.list(account.id)[0]
    with pytest.raises(BadRequest):
        store.groups.delete(account.id, all_group.id)
    with pytest.raises(BadRequest):
        store.groups.update(dataclasses.replace(all_group, name="Everyone"))


def test_group_used_by_private_service_cannot_be_deleted_acceptance_78(store, account):
    g = store.groups.create(Group(id="grp-admins", account_id=account.id, name="admins"))
    store.services.create(private_service(account.id, (g.id,)))
    with pytest.raises(GroupInUse) as info:
        store.groups.delete(account.id, g.id)
    assert info.value.message == (
        "group has been linked to reverse proxy service: myapp.eu.proxy.netbird.io"
    )
    assert info.value.http_status == 400
    assert store.groups.get(account.id, g.id) == g


def test_group_used_by_enabled_bearer_auth_cannot_be_deleted(store, account):
    g = store.groups.create(Group(account_id=account.id, name="sso"))
    p = store.peers.create(Peer(account_id=account.id, name="srv", key="k-srv"))
    store.services.create(
        Service(
            account_id=account.id,
            name="web",
            domain="web.eu.proxy.netbird.io",
            auth=AuthConfig(bearer_auth=BearerAuth(True, (g.id,))),
            targets=(Target(target_type="peer", target_id=p.id, port=80),),
        )
    )
    with pytest.raises(GroupInUse):
        store.groups.delete(account.id, g.id)


def test_stale_access_groups_on_public_service_do_not_block_delete(store, account):
    g = store.groups.create(Group(account_id=account.id, name="old"))
    svc = store.services.create(private_service(account.id, (g.id,)))
    store.services.update(dataclasses.replace(svc, private=False))
    store.groups.delete(account.id, g.id)
    assert store.services.get(account.id, svc.id).access_groups == (g.id,)


def test_group_delete_strips_user_auto_groups(store, account):
    g = store.groups.create(Group(account_id=account.id, name="tmp"))
    keep = store.groups.create(Group(account_id=account.id, name="keep"))
    store.users.create(User(id="dave", account_id=account.id, auto_groups=[g.id, keep.id]))
    store.groups.delete(account.id, g.id)
    assert store.users.get(account.id, "dave").auto_groups == (keep.id,)


def test_sql_metacharacters_stored_verbatim(store, account):
    g = store.groups.create(Group(account_id=account.id, name=EVIL))
    u = store.users.create(User(id=EVIL, account_id=account.id, name=EVIL, email=EVIL))
    p = store.peers.create(Peer(account_id=account.id, name=EVIL, key=EVIL))
    assert store.groups.get(account.id, g.id).name == EVIL
    assert store.users.get(account.id, EVIL) == u
    assert store.peers.get(account.id, p.id).name == EVIL
    assert store.peers.get_by_key(EVIL) == store.peers.get(account.id, p.id)
    assert len(store.groups.list(account.id)) == 2


# --- peers --------------------------------------------------------------------------------


def test_peer_ip_allocation_unique_v4_and_v6(store, account):
    got = [
        store.peers.create(Peer(account_id=account.id, name=f"p{i}", key=f"k{i}")) for i in range(5)
    ]
    assert [p.ip for p in got] == [f"100.64.0.{i}" for i in range(1, 6)]
    v6 = [p.ipv6 for p in got]
    assert len(set(v6)) == 5
    assert all(ipaddress.IPv6Address(a) in ipaddress.IPv6Network(account.network_v6) for a in v6)


def test_peer_without_ipv6(store, account):
    p = store.peers.create(Peer(account_id=account.id, name="v4only", key="k", ipv6=None))
    assert p.ipv6 is None


def test_peer_requested_ip(store, account):
    p = store.peers.create(Peer(account_id=account.id, name="fixed", key="k1", ip="100.64.0.10"))
    assert p.ip == "100.64.0.10"
    with pytest.raises(Conflict, match="already in use"):
        store.peers.create(Peer(account_id=account.id, name="dup", key="k2", ip="100.64.0.10"))
    with pytest.raises(ValidationError, match="outside"):
        store.peers.create(Peer(account_id=account.id, name="out", key="k3", ip="10.0.0.1"))


def test_peer_duplicate_key_is_global_conflict(store, account):
    other = store.accounts.create(Account(id="acct-2"))
    store.peers.create(Peer(account_id=account.id, name="a", key="same"))
    with pytest.raises(Conflict, match="peer with this key already exists"):
        store.peers.create(Peer(account_id=other.id, name="b", key="same"))
    assert store.peers.list(other.id) == []


def test_peer_lookup_by_tunnel_ip(store, account):
    p = store.peers.create(Peer(account_id=account.id, name="u", key="k", ip="100.64.0.10"))
    assert store.peers.get_by_ip(account.id, "100.64.0.10") == p
    assert store.peers.get_by_ip(account.id, "::ffff:100.64.0.10") == p
    assert store.peers.get_by_ip(account.id, p.ipv6) == p  # by its IPv6 address too
    assert store.peers.get_by_ip(account.id, "100.64.0.250") is None  # 52
    assert store.peers.get_by_ip(account.id, "not-an-ip") is None


def test_peer_lookup_is_scoped_to_account_acceptance_53(store, account):
    other = store.accounts.create(Account(id="acct-b"))
    store.peers.create(Peer(account_id=other.id, name="b", key="kb", ip="100.64.0.10"))
    assert store.peers.get_by_ip(account.id, "100.64.0.10") is None
    mine = store.peers.create(Peer(account_id=account.id, name="a", key="ka", ip="100.64.0.10"))
    assert store.peers.get_by_ip(account.id, "100.64.0.10").id == mine.id


def test_peer_gets_all_group_and_owner_auto_groups(store, account):
    g = store.groups.create(Group(id="grp-admins", account_id=account.id, name="admins"))
    store.users.create(User(id="alice", account_id=account.id, auto_groups=[g.id]))
    p = store.peers.create(Peer(account_id=account.id, name="u", key="k", user_id="alice"))
    names = {x.name for x in store.peers.groups_of(account.id, p.id)}
    assert names == {"All", "admins"}
    refs = store.peers.group_refs_of(account.id, p.id)
    assert sorted(refs) == refs and {name for _, name in refs} == {"All", "admins"}
    assert ("grp-admins", "admins") in refs
    assert store.peers.owner_of(account.id, p.id).id == "alice"


def test_proxy_peer_not_in_all_group(store, account):
    p = store.peers.create(
        Peer(
            account_id=account.id,
            name="proxy-1",
            key="kp",
            proxy=True,
            proxy_cluster="eu.proxy.netbird.io",
            ephemeral=True,
        )
    )
    assert p.groups == () and p.proxy and p.proxy_cluster == "eu.proxy.netbird.io"
    store.peers.create(Peer(account_id=account.id, name="user", key="ku"))
    assert [x.id for x in store.peers.list_proxy_peers(account.id)] == [p.id]
    assert store.peers.list_proxy_peers(account.id, "other.cluster") == []
    assert [x.id for x in store.peers.list(account.id, proxy=True)] == [p.id]
    assert len(store.peers.list(account.id, proxy=False)) == 1
    assert store.peers.owner_of(account.id, p.id) is None


def test_peer_unknown_owner_or_group_rejected(store, account):
    with pytest.raises(ValidationError, match="user 'ghost' not found"):
        store.peers.create(Peer(account_id=account.id, name="x", key="k", user_id="ghost"))
    with pytest.raises(ValidationError, match="group 'ghost' not found"):
        store.peers.create(Peer(account_id=account.id, name="x", key="k", groups=["ghost"]))
    assert store.peers.list(account.id) == []


def test_peer_update_connected_delete(store, account):
    g = store.groups.create(Group(account_id=account.id, name="g"))
    p = store.peers.create(
        Peer(account_id=account.id, name="srv", key="k", endpoint="1.2.3.4:51820")
    )
    assert p.endpoint == "1.2.3.4:51820"
    p2 = store.peers.update(dataclasses.replace(p, name="srv2", groups=[g.id], ip="100.64.9.9"))
    assert p2.name == "srv2" and p2.groups == (g.id,) and p2.ip == p.ip
    p3 = store.peers.set_connected(account.id, p.id, True)
    assert p3.connected and p3.last_seen is not None
    store.peers.delete(account.id, p.id)
    with pytest.raises(NotFound, match="peer not found"):
        store.peers.get(account.id, p.id)
    assert store.groups.get(account.id, g.id).peers == ()
    # the freed address is reused
    assert store.peers.create(Peer(account_id=account.id, name="n", key="k2")).ip == p.ip


def test_peer_linked_to_service_cannot_be_deleted(store, account):
    p = store.peers.create(Peer(account_id=account.id, name="srv", key="k"))
    store.services.create(
        Service(
            account_id=account.id,
            name="web",
            domain="web.eu.proxy.netbird.io",
            targets=(Target(target_type="peer", target_id=p.id, port=80),),
        )
    )
    with pytest.raises(BadRequest, match="linked to reverse proxy service"):
        store.peers.delete(account.id, p.id)
    assert store.peers.get(account.id, p.id) == p


def test_address_exhaustion_stores_nothing(store):
    small = store.accounts.create(Account(id="tiny", network_v4="10.9.0.0/30"))
    a = store.peers.create(Peer(account_id=small.id, name="a", key="ka"))
    b = store.peers.create(Peer(account_id=small.id, name="b", key="kb"))
    assert {a.ip, b.ip} == {"10.9.0.1", "10.9.0.2"}
    with pytest.raises(AddressExhausted):
        store.peers.create(Peer(account_id=small.id, name="c", key="kc"))
    assert len(store.peers.list(small.id)) == 2
    assert store.peers.get_by_key("kc") is None


# --- personal access tokens -----------------------------------------------------------------


def test_personal_access_tokens(store, account):
    store.users.create(User(id="erin", account_id=account.id, role="admin"))
    pat, plain = store.users.create_token(account.id, "erin", "laptop")
    assert plain.startswith("nbp_") and len(plain) == 40 and plain not in repr(pat)
    user, got = store.users.authenticate_token(plain)
    assert user.id == "erin" and got.id == pat.id and got.last_used is not None
    assert [t.id for t in store.users.list_tokens(account.id, "erin")] == [pat.id]
    with pytest.raises(Unauthenticated, match="invalid token format"):
        store.users.authenticate_token(plain[:-1] + ("A" if plain[-1] != "A" else "B"))
    with pytest.raises(Unauthenticated, match="invalid token format"):
        store.users.authenticate_token("garbage")
    store.users.delete_token(account.id, "erin", pat.id)
    with pytest.raises(Unauthenticated, match="invalid token"):
        store.users.authenticate_token(plain)
    with pytest.raises(NotFound, match="token not found"):
        store.users.delete_token(account.id, "erin", pat.id)


def test_personal_access_token_blocked_user_and_expiry(store, account):
    from datetime import UTC, datetime, timedelta

    u = store.users.create(User(id="frank", account_id=account.id))
    _, plain = store.users.create_token(account.id, "frank", "t")
    store.users.update(dataclasses.replace(u, blocked=True))
    with pytest.raises(Unauthenticated):
        store.users.authenticate_token(plain)
    store.users.update(dataclasses.replace(u, blocked=False))
    past = datetime.now(UTC) - timedelta(seconds=1)
    _, expired = store.users.create_token(account.id, "frank", "old", expires_at=past)
    with pytest.raises(Unauthenticated, match="token expired or revoked"):
        store.users.authenticate_token(expired)
    assert store.users.authenticate_token(plain)[0].id == "frank"


# --- listeners -------------------------------------------------------------------------------


def test_listeners_called_after_commit_only(store, account):
    seen = []
    store.add_listener(lambda kind, acct, ids: seen.append((kind, acct, ids)))

    def broken(kind, acct, ids):
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    g = store.groups.create(Group(account_id=account.id, name="g"))
    assert seen == [(ChangeKind.GROUP, account.id, (g.id,))]
    with pytest.raises(Conflict):
        store.groups.create(Group(account_id=account.id, name="g"))
    assert len(seen) == 1  # failed write: no notification
    svc = store.services.create(private_service(account.id, (g.id,)))
    store.services.update(dataclasses.replace(svc, name="renamed"))
    store.services.delete(account.id, svc.id)
    kinds = [k for k, _, _ in seen[1:]]
    assert kinds == [
        ChangeKind.SERVICE_CREATED,
        ChangeKind.SERVICE_UPDATED,
        ChangeKind.SERVICE_DELETED,
    ]
    assert all(ids == (svc.id,) for _, _, ids in seen[1:])
    store.remove_listener(broken)


def test_nul_characters_refused_uniformly(store, account):
    with pytest.raises(ValidationError, match="must not contain NUL"):
        store.groups.create(Group(account_id=account.id, name="a\x00b"))
    with pytest.raises(ValidationError, match="must not contain NUL"):
        store.users.create(User(account_id=account.id, email="a\x00@b"))
    with pytest.raises(ValidationError, match="must not contain NUL"):
        store.peers.create(Peer(account_id=account.id, name="p", key="k\x00"))
    assert [g.name for g in store.groups.list(account.id)] == ["All"]
    assert store.users.list(account.id) == [] and store.peers.list(account.id) == []


def test_lookup_with_unstorable_input_is_a_clean_error_or_miss(store, account):
    for call in (
        lambda: store.users.get(account.id, "x\x00"),
        lambda: store.services.get_by_domain("x\x00.example"),
        lambda: store.peers.get_by_key("k\x00"),
    ):
        try:
            result = call()
        except (ValidationError, NotFound):
            continue
        assert result is None


TRICKY_NAMES = [
    EVIL,
    "Robert'); DROP TABLE users;--",
    "100% _under_ \\ back\\slash",
    "emoji 🛡️ and 中文 and עברית",
    "e\u0301 combining, zero\u200dwidth",
    "tab\tnew\nline\r\x01ctl",
    "   padded   ",
    "x" * 255,
    "ünïcödé" * 20,
]


def test_arbitrary_names_round_trip_verbatim(store, account):
    for i, name in enumerate(TRICKY_NAMES):
        g = store.groups.create(Group(account_id=account.id, name=name))
        assert store.groups.get(account.id, g.id).name == name
        uid = f"user-{i}:{name}"[:255]
        u = store.users.create(User(id=uid, account_id=account.id, name=name))
        assert store.users.get(account.id, u.id) == u
        assert store.users.find(u.id) == u
    assert len(store.groups.list(account.id)) == len(TRICKY_NAMES) + 1


def test_normalise_dsn(tmp_path):
    from nbgateway.management.store import normalise_dsn

    assert normalise_dsn("postgresql://u:p@h/db", None) == "postgresql+psycopg://u:p@h/db"
    assert normalise_dsn("postgres://u:p@h/db", None) == "postgresql+psycopg://u:p@h/db"
    assert normalise_dsn("sqlite:////x/y.db", None) == "sqlite:////x/y.db"
    data = tmp_path / "data"
    assert normalise_dsn(None, str(data)) == f"sqlite:///{data}/store.db"
    assert data.is_dir()
    with pytest.raises(ValueError):
        normalise_dsn(None, None)


def test_over_long_bounded_values_refused_on_every_backend(store, account):
    with pytest.raises(ValidationError, match="exceeds maximum length of 255"):
        store.users.create(User(id="u" * 256, account_id=account.id))
    with pytest.raises(ValidationError, match="exceeds maximum length of 255"):
        store.peers.create(Peer(account_id=account.id, name="p", key="k" * 256))
    assert store.users.list(account.id) == [] and store.peers.list(account.id) == []
    with pytest.raises(ValidationError):  # a lookup with an unstorable key: 422, never a 500
        store.users.find("u" * 256)


def test_listeners_see_membership_side_effects(store, account):
    g = store.groups.create(Group(account_id=account.id, name="g"))
    store.users.create(User(id="owner", account_id=account.id, auto_groups=[g.id]))
    seen = []
    store.add_listener(lambda kind, acct, ids: seen.append((kind, ids)))
    p = store.peers.create(Peer(account_id=account.id, name="p", key="k", user_id="owner"))
    all_id = next(x.id for x in store.groups.list(account.id) if x.name == "All")
    assert seen == [(ChangeKind.PEER, (p.id,)), (ChangeKind.GROUP, tuple(sorted((g.id, all_id))))]
    seen.clear()
    store.peers.update(dataclasses.replace(p, groups=[all_id]))  # leaves g, keeps All
    assert seen == [(ChangeKind.PEER, (p.id,)), (ChangeKind.GROUP, (g.id,))]
    seen.clear()
    store.peers.delete(account.id, p.id)
    assert seen == [(ChangeKind.PEER, (p.id,)), (ChangeKind.GROUP, (all_id,))]
    seen.clear()
    q = store.peers.create(Peer(account_id=account.id, name="q", key="k2", user_id="owner"))
    seen.clear()
    store.users.delete(account.id, "owner")  # its peers go with it
    assert seen == [(ChangeKind.USER, ("owner",)), (ChangeKind.PEER, (q.id,)),
                    (ChangeKind.GROUP, tuple(sorted((g.id, all_id))))]


def test_membership_order_kept_when_peer_updated(store, account):
    p1 = store.peers.create(Peer(account_id=account.id, name="p1", key="k1"))
    p2 = store.peers.create(Peer(account_id=account.id, name="p2", key="k2"))
    g = store.groups.create(Group(account_id=account.id, name="g", peers=[p1.id, p2.id]))
    store.peers.update(dataclasses.replace(store.peers.get(account.id, p1.id), name="renamed"))
    assert store.groups.get(account.id, g.id).peers == (p1.id, p2.id)
