"""Per-account quotas (nbgateway/management/quotas.py, store/_quotas.py) on SQLite and PostgreSQL.

Every quota'd resource: the create at the limit is refused with QuotaExceeded
and stores nothing, another account is unaffected, a lowered quota keeps what
an account has; PostgreSQL: concurrent creates (threads, two engines) never
pass the limit.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest

from nbgateway.management.errors import PreconditionFailed, QuotaExceeded
from nbgateway.management.model import (
    Account,
    AuthConfig,
    BearerAuth,
    CustomDomain,
    Group,
    Peer,
    Service,
    Target,
    TargetOptions,
    User,
    utcnow,
)
from nbgateway.management.quotas import SPECS, Quotas, env_name, parse_limit
from nbgateway.management.store import Store

CLUSTER = "eu.proxy.netbird.io"
A, B = "acct-a", "acct-b"


def cluster_target(**kw) -> Target:
    base = dict(target_type="cluster", target_id=CLUSTER, host="backend.lan", port=8080,
                options=TargetOptions(direct_upstream=True))
    base.update(kw)
    return Target(**base)


def http_service(account_id: str, i: int, **kw) -> Service:
    base = dict(account_id=account_id, name=f"s{i}", domain=f"{account_id}-s{i}.{CLUSTER}",
                targets=(cluster_target(),))
    base.update(kw)
    return Service(**base)


def peer_key(account_id: str, i: int) -> str:
    return f"key-{account_id}-{i}"


@pytest.fixture
def two(store: Store) -> Store:
    for acct in (A, B):
        store.accounts.create(Account(id=acct, domain=f"{acct}.test"))
        store.users.create(User(id=f"{acct}-admin", account_id=acct, email="a@x", name="a",
                                role="admin"))
    return store


# --- one creator per account-wide resource: (quota name, what to count, make one) ------------

def _mk_service(s: Store, acct: str, i: int) -> None:
    s.services.create(http_service(acct, i))


def _mk_l4(s: Store, acct: str, i: int) -> None:
    peer = s.peers.create(Peer(account_id=acct, name=f"db{i}", key=f"l4-{acct}-{i}"))
    s.services.create(Service(account_id=acct, name=f"db{i}", domain=f"{acct}-db{i}.{CLUSTER}",
                              mode="tcp", targets=(Target(target_type="peer", target_id=peer.id,
                                                          port=5432, protocol="tcp"),)))


def _mk_peer(s: Store, acct: str, i: int) -> None:
    s.peers.create(Peer(account_id=acct, name=f"p{i}", key=peer_key(acct, i)))


def _mk_user(s: Store, acct: str, i: int) -> None:
    s.users.create(User(id=f"{acct}-u{i}", account_id=acct, email=f"u{i}@x", name=f"u{i}",
                        role="user"))


def _mk_group(s: Store, acct: str, i: int) -> None:
    s.groups.create(Group(account_id=acct, name=f"g{i}"))


def _mk_pat(s: Store, acct: str, i: int) -> None:
    s.users.create_token(acct, f"{acct}-admin", f"t{i}")


def _mk_proxy_token(s: Store, acct: str, i: int) -> None:
    s.proxies.create_token(f"t{i}", account_id=acct)


def _mk_domain(s: Store, acct: str, i: int) -> None:
    s.domains.create(CustomDomain(account_id=acct, domain=f"d{i}.{acct}.example",
                                  target_cluster=CLUSTER))


def _count_services(s: Store, acct: str) -> int:
    return len(s.services.list(acct))


def _count_l4(s: Store, acct: str) -> int:
    return sum(1 for x in s.services.list(acct) if x.mode != "http")


def _count_peers(s: Store, acct: str) -> int:
    return len(s.peers.list(acct))


def _count_users(s: Store, acct: str) -> int:
    return len(s.users.list(acct))


def _count_groups(s: Store, acct: str) -> int:
    return len(s.groups.list(acct))


def _count_pats(s: Store, acct: str) -> int:
    return sum(len(s.users.list_tokens(acct, u.id)) for u in s.users.list(acct))


def _count_proxy_tokens(s: Store, acct: str) -> int:
    return len(s.proxies.list_tokens(acct))


def _count_domains(s: Store, acct: str) -> int:
    return len(s.domains.list(acct))


RESOURCES: dict[str, tuple[Callable[[Store, str, int], None], Callable[[Store, str], int]]] = {
    "services": (_mk_service, _count_services),
    "l4-services": (_mk_l4, _count_l4),
    "peers": (_mk_peer, _count_peers),
    "users": (_mk_user, _count_users),
    "groups": (_mk_group, _count_groups),
    "user-tokens": (_mk_pat, _count_pats),
    "proxy-tokens": (_mk_proxy_token, _count_proxy_tokens),
    "domains": (_mk_domain, _count_domains),
}


def test_every_account_quota_has_a_creator_here() -> None:
    per_account = {s.name for s in SPECS if s.per == "account"} - {"group-members"}
    assert per_account == set(RESOURCES)


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_create_at_quota_refused_other_account_unaffected(two: Store, name: str) -> None:
    make, count = RESOURCES[name]
    base_a, base_b = count(two, A), count(two, B)
    two.quotas = Quotas({name: base_a + 2})
    make(two, A, 0)
    make(two, A, 1)
    assert count(two, A) == base_a + 2
    with pytest.raises(QuotaExceeded) as exc:
        make(two, A, 2)
    # 412 for REST (a PreconditionFailed), RESOURCE_EXHAUSTED for gRPC
    assert isinstance(exc.value, PreconditionFailed)
    assert exc.value.http_status == 412 and exc.value.grpc_code == "RESOURCE_EXHAUSTED"
    assert count(two, A) == base_a + 2  # nothing stored
    # the other account has its own count: B is far below the same limit
    make(two, B, 0)
    assert count(two, B) == base_b + 1


@pytest.mark.parametrize("name", ["services", "peers", "groups", "users", "domains"])
def test_lowered_quota_keeps_existing_refuses_new(two: Store, name: str) -> None:
    make, count = RESOURCES[name]
    for i in range(3):
        make(two, A, i)
    have = count(two, A)
    two.quotas = Quotas({name: have - 2})  # the operator lowers it below what A holds
    assert count(two, A) == have  # nothing taken away
    with pytest.raises(QuotaExceeded):
        make(two, A, 10)
    assert count(two, A) == have


def test_lowered_group_quota_deletes_then_room(two: Store) -> None:
    for i in range(3):
        _mk_group(two, A, i)
    have = _count_groups(two, A)  # All + 3
    two.quotas = Quotas({"groups": have - 1})
    g = [x for x in two.groups.list(A) if x.name != "All"]
    two.groups.delete(A, g[0].id)  # deletes always pass; now exactly at the limit
    with pytest.raises(QuotaExceeded):
        _mk_group(two, A, 10)
    two.groups.delete(A, g[1].id)
    _mk_group(two, A, 11)  # one below: room for one


def test_message_names_the_limit_only(two: Store) -> None:
    for i in range(5):
        _mk_group(two, B, 100 + i)  # B: All + 5, made before the limit
    two.quotas = Quotas({"groups": 3})
    for i in range(2):
        _mk_group(two, A, i)  # A: All + 2 = 3 (at the limit)
    with pytest.raises(QuotaExceeded) as ea:
        _mk_group(two, A, 9)
    with pytest.raises(QuotaExceeded) as eb:
        _mk_group(two, B, 9)
    # the same text whatever either account holds: no count of anyone's rows
    assert str(ea.value) == str(eb.value) == (
        "quota exceeded: at most 3 groups per account "
        "(delete some first, or ask the operator for more)")


def test_unlimited_and_zero(two: Store) -> None:
    two.quotas = Quotas.unlimited()
    for i in range(30):
        _mk_group(two, A, i)
    two.quotas = Quotas({"groups": 0})  # 0 = unlimited
    _mk_group(two, A, 99)
    assert _count_groups(two, A) == 32


# --- group memberships ------------------------------------------------------------------------

def _peers(s: Store, acct: str, n: int) -> list[str]:
    return [s.peers.create(Peer(account_id=acct, name=f"m{i}", key=f"m-{acct}-{i}")).id
            for i in range(n)]


def _members(s: Store, acct: str) -> int:
    return sum(len(g.peers) for g in s.groups.list(acct) if g.name != "All")


def test_group_members_every_path(two: Store) -> None:
    pa, pb = _peers(two, A, 6), _peers(two, B, 6)
    two.quotas = Quotas({"group-members": 4})
    g1 = two.groups.create(Group(account_id=A, name="g1", peers=tuple(pa[:3])))
    # create with members past the limit
    with pytest.raises(QuotaExceeded):
        two.groups.create(Group(account_id=A, name="g2", peers=tuple(pa[3:5])))
    assert [g.name for g in two.groups.list(A) if g.name == "g2"] == []
    g2 = two.groups.create(Group(account_id=A, name="g2", peers=(pa[3],)))
    assert _members(two, A) == 4
    # add_peers, full replace, peer registration into a group: all refused
    with pytest.raises(QuotaExceeded):
        two.groups.add_peers(A, g1.id, [pa[4]])
    with pytest.raises(QuotaExceeded):
        two.groups.update(dataclasses.replace(g2, peers=(pa[3], pa[4])))
    with pytest.raises(QuotaExceeded):
        two.peers.create(Peer(account_id=A, name="new", key="new-a", groups=(g1.id,)))
    assert _members(two, A) == 4 and len(two.peers.list(A)) == 6
    # a peer joining only All is not a counted membership
    two.peers.create(Peer(account_id=A, name="plain", key="plain-a"))
    # an update that does not grow passes (swap one member), removal passes
    two.groups.update(dataclasses.replace(g2, peers=(pa[5],)))
    two.groups.remove_peers(A, g1.id, [pa[0]])
    two.groups.add_peers(A, g1.id, [pa[0]])
    assert _members(two, A) == 4
    # a peer's groups replaced (PUT /peers/{id}): refused when that grows them
    p5 = two.peers.get(A, pa[5])
    with pytest.raises(QuotaExceeded):
        two.peers.update(dataclasses.replace(p5, groups=(*p5.groups, g1.id)))
    assert two.peers.get(A, pa[5]).groups == p5.groups
    two.peers.update(dataclasses.replace(p5, name="renamed"))  # same groups: passes
    # the All group's own membership changes are not counted
    all_a = next(g for g in two.groups.list(A) if g.name == "All")
    two.groups.add_peers(A, all_a.id, pa)
    # B: its own count
    two.groups.create(Group(account_id=B, name="gb", peers=tuple(pb[:4])))
    assert _members(two, B) == 4


def test_owner_auto_groups_count_on_peer_create(two: Store) -> None:
    g = two.groups.create(Group(account_id=A, name="auto"))
    two.users.create(User(id="owner", account_id=A, email="o@x", name="o", role="user",
                          auto_groups=(g.id,)))
    two.quotas = Quotas({"group-members": 1})
    two.peers.create(Peer(account_id=A, name="p1", key="o1", user_id="owner"))
    with pytest.raises(QuotaExceeded):
        two.peers.create(Peer(account_id=A, name="p2", key="o2", user_id="owner"))
    assert len(two.peers.list(A)) == 1


# --- per-service sizes ------------------------------------------------------------------------

def test_service_targets_and_groups(two: Store) -> None:
    gids = [two.groups.create(Group(account_id=A, name=f"ag{i}")).id for i in range(4)]
    two.quotas = Quotas({"service-targets": 2, "service-groups": 2})
    targets = tuple(cluster_target(path=f"/p{i}") for i in range(3))
    with pytest.raises(QuotaExceeded, match="at most 2 targets per service"):
        two.services.create(http_service(A, 1, targets=targets))
    with pytest.raises(QuotaExceeded, match="at most 2 access groups per service"):
        two.services.create(http_service(A, 1, private=True, access_groups=tuple(gids[:3])))
    with pytest.raises(QuotaExceeded):
        two.services.create(http_service(A, 1, auth=AuthConfig(bearer_auth=BearerAuth(
            enabled=True, distribution_groups=tuple(gids[:3])))))
    assert two.services.list(A) == []
    s = two.services.create(http_service(A, 1, targets=targets[:2], private=True,
                                         access_groups=tuple(gids[:2])))
    with pytest.raises(QuotaExceeded):
        two.services.update(dataclasses.replace(s, targets=targets))
    assert len(two.services.get(A, s.id).targets) == 2
    # lowered below what the service has: an update that keeps or shrinks passes
    two.quotas = Quotas({"service-targets": 1, "service-groups": 1})
    kept = two.services.update(dataclasses.replace(s, name="renamed"))
    assert len(kept.targets) == 2 and len(kept.access_groups or ()) == 2
    with pytest.raises(QuotaExceeded):
        two.services.update(dataclasses.replace(s, access_groups=tuple(gids[:3])))
    two.services.update(dataclasses.replace(s, access_groups=(gids[0],)))


# --- proxy tokens: dead ones make room ----------------------------------------------------------

def test_proxy_tokens_dead_ones_purged_for_room(two: Store) -> None:
    two.quotas = Quotas({"proxy-tokens": 2})
    t1, _ = two.proxies.create_token("t1", account_id=A)
    t2, _ = two.proxies.create_token("t2", account_id=A,
                                     expires_at=utcnow() - timedelta(seconds=1))
    two.proxies.create_token("b1", account_id=B)
    # at the limit, one expired: it is deleted, the new one stored
    t3, _ = two.proxies.create_token("t3", account_id=A)
    left = {t.id for t in two.proxies.list_tokens(A)}
    assert left == {t1.id, t3.id} and t2.id not in left
    with pytest.raises(QuotaExceeded):
        two.proxies.create_token("t4", account_id=A)
    two.proxies.revoke_token(A, t1.id)
    t5, _ = two.proxies.create_token("t5", account_id=A)
    assert {t.id for t in two.proxies.list_tokens(A)} == {t3.id, t5.id}
    assert len(two.proxies.list_tokens(B)) == 1
    # management-wide tokens (the operator's) have no account quota
    for i in range(4):
        two.proxies.create_token(f"w{i}", account_id=None)


# --- concurrency (PostgreSQL: the account lock; two engines = two processes) --------------------

@pytest.mark.parametrize("db_dsn", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
@pytest.mark.parametrize("name", ["groups", "peers", "services"])
def test_concurrent_creates_never_exceed(store_factory, name: str) -> None:
    first, second = store_factory(), store_factory()
    first.accounts.create(Account(id=A, domain="a.test"))
    make, count = RESOURCES[name]
    base = count(first, A)
    limit = base + 5
    for s in (first, second):
        s.quotas = Quotas({name: limit})
    refused: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def worker(i: int) -> None:
        s = first if i % 2 else second
        start.wait()
        try:
            make(s, A, i)
        except QuotaExceeded:
            refused.append(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert count(first, A) == limit
    assert len(refused) == 16 - 5


def test_sqlite_writes_are_serialised(tmp_path) -> None:
    """The SQLite half of the race argument: every write holds the per-file
    lock and runs BEGIN IMMEDIATE (a second engine on the same file shares it)."""
    dsn = f"sqlite:///{tmp_path / 's.db'}"
    a, b = Store.open(dsn, known_clusters=[CLUSTER]), Store.open(dsn, known_clusters=[CLUSTER])
    try:
        assert a._write_lock is b._write_lock is not None
        a.accounts.create(Account(id=A, domain="a.test"))
        for s in (a, b):
            s.quotas = Quotas({"groups": 6})
        refused: list[int] = []
        start = threading.Barrier(12)

        def worker(i: int) -> None:
            start.wait()
            try:
                _mk_group(a if i % 2 else b, A, i)
            except QuotaExceeded:
                refused.append(i)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert _count_groups(a, A) == 6 and len(refused) == 12 - 5
    finally:
        a.close()
        b.close()


# --- the limits themselves ----------------------------------------------------------------------

def test_parse_and_settings() -> None:
    assert parse_limit("1_000") == 1000 and parse_limit(0) == 0
    for bad in ("-1", "x", "1.5", ""):
        with pytest.raises(ValueError):
            parse_limit(bad)
    q = Quotas.from_settings({"quota-peers": "7", "quota-services": None})
    assert q.limit("peers") == 7
    assert q.limit("services") == next(s.default for s in SPECS if s.name == "services")
    with pytest.raises(ValueError, match="--quota-groups"):
        Quotas.from_settings({"quota-groups": "-3"})
    with pytest.raises(ValueError, match="unknown quota"):
        Quotas({"nope": 1})
    env = {env_name(s): "3" for s in SPECS}
    assert all(v == 3 for _, v in Quotas.from_environ(env).items())
    assert env_name(SPECS[0]) == "NB_MANAGEMENT_QUOTA_SERVICES"
    # defaults: none unlimited
    assert all(v > 0 for _, v in Quotas().items())


def test_check_refuses_growth_only() -> None:
    q = Quotas({"peers": 5})
    q.check("peers", 4)
    q.check("peers", 9, 0)  # over a lowered limit, adding nothing
    q.check("peers", 9, -1)
    with pytest.raises(QuotaExceeded):
        q.check("peers", 5)
    with pytest.raises(QuotaExceeded):
        q.check("peers", 3, 3)
