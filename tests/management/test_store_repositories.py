"""Store composition: one repository per aggregate, reached as attributes (SQLite and PostgreSQL).

The store is no longer a stack of mixins: its state (engine, transactions,
listeners) is the store's, each aggregate's operations are a repository's,
and the earlier flat names are gone (callers name the repository).
"""

from __future__ import annotations

import inspect

from nbgateway.management.model import (
    Account,
    ChangeKind,
    CustomDomain,
    Group,
    Peer,
    ProxyRecord,
    Service,
    Target,
    TargetOptions,
    User,
)
from nbgateway.management.store import Store
from nbgateway.management.store._accounts import (
    AccountRepository,
    GroupRepository,
    PeerRepository,
    UserRepository,
)
from nbgateway.management.store._base import Repository, StoreBase
from nbgateway.management.store._proxies import ProxyRepository
from nbgateway.management.store._services import DomainRepository, ServiceRepository

from .conftest import CLUSTER

REPOSITORIES = {
    "accounts": AccountRepository,
    "users": UserRepository,
    "groups": GroupRepository,
    "peers": PeerRepository,
    "services": ServiceRepository,
    "domains": DomainRepository,
    "proxies": ProxyRepository,
}


def test_store_is_composed_not_mixed_in() -> None:
    assert Store.__mro__ == (Store, StoreBase, object)
    for cls in REPOSITORIES.values():
        assert cls.__mro__ == (cls, Repository, object)


def test_each_repository_is_an_attribute_on_this_store(store: Store) -> None:
    for attr, cls in REPOSITORIES.items():
        repo = getattr(store, attr)
        assert type(repo) is cls
        assert repo._store is store


def test_the_store_has_no_flat_names_only_repositories(store: Store) -> None:
    own = {n for n, _ in inspect.getmembers(Store)}
    extra = {n for n, v in vars(store).items() if callable(v) and n not in own}
    assert extra == set()
    public = {n for n in dir(store) if not n.startswith("_")}
    for gone in ("create_peer", "get_peer_by_key", "verify_proxy_token",
                 "create_personal_access_token", "list_services", "ensure_default_account"):
        assert gone not in public, gone
    assert set(REPOSITORIES) | {"access_logs"} <= public


def test_repositories_share_one_database_and_one_set_of_listeners(store: Store) -> None:
    seen: list[tuple[ChangeKind, str]] = []
    store.add_listener(lambda kind, account_id, ids: seen.append((kind, account_id)))
    account = store.accounts.create(Account(id="acct-r", domain="netbird.test"))
    grp = store.groups.create(Group(account_id=account.id, name="devs"))
    user = store.users.create(User(account_id=account.id, email="u@x.test", role="user"))
    peer = store.peers.create(
        Peer(account_id=account.id, name="p", key="key-r", user_id=user.id, groups=(grp.id,))
    )
    # one aggregate's write is visible through the others and the flat names
    assert store.peers.get_by_key("key-r") == peer
    assert store.peers.get(account.id, peer.id) == peer
    assert store.groups.get(account.id, grp.id).peers == (peer.id,)
    store.domains.create(
        CustomDomain(account_id=account.id, domain="r.test", target_cluster=CLUSTER)
    )
    svc = store.services.create(
        Service(
            account_id=account.id, name="s", domain="s.r.test", private=True,
            access_groups=(grp.id,),
            targets=(Target(target_type="cluster", target_id=CLUSTER, host="10.0.0.5", port=80,
                            options=TargetOptions(direct_upstream=True)),),
        )
    )
    assert store.services.get_by_domain("s.r.test") == svc
    assert [s.id for s in store.services.list(account.id)] == [svc.id]
    store.proxies.register(ProxyRecord(id="px-r", session_id="s", cluster_address=CLUSTER,
                                       ip_address="127.0.0.1"))
    assert store.proxies.get("px-r") is not None
    assert ChangeKind.PEER in {k for k, _ in seen}
    # deleting the account (accounts repository) removes what the others stored
    store.accounts.delete(account.id)
    assert store.peers.get_by_key("key-r") is None
    assert store.services.get_by_domain("s.r.test") is None
