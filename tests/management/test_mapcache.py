"""The peer channel's per-account memo (management/mapcache.py) against fresh builds.

A randomised account in a real store goes through random changes; after each
one, every peer's map, encoded response and the access digest taken from the
cache equal the ones built the old way (``load_account_view`` of every table
in its own read, ``users.list``, ``build_network_map``).  The Login answer
built from the peer and its account alone equals the one built from the full
map.  Status reports and a client's connection state cost no account read.
"""

from __future__ import annotations

import random
import threading

import pytest
from nacl.public import PrivateKey

from nbgateway._proto import management_pb2 as pb
from nbgateway.management.crypto_box import ServerKey
from nbgateway.management.mapcache import MapCache, same_peer_for_maps, same_service_for_maps
from nbgateway.management.model import (
    Account,
    ChangeKind,
    Group,
    Peer,
    Service,
    ServiceMeta,
    ServiceStatus,
    Target,
    TargetOptions,
    User,
)
from nbgateway.management.networkmap import (
    build_network_map,
    network_map_to_json,
    own_network_map,
    to_proto_network_map,
    to_proto_peer_config,
)
from nbgateway.management.peerchannel import ManagementServicer, access_digest
from nbgateway.management.peerhub import PeerUpdateHub, Subscription
from nbgateway.management.synthetic import load_account_view
from nbgateway.peerbox import encode_wg_key, open_message

CLUSTER = "eu.proxy.netbird.io"
ACCT = "acct-r"


def _key(rnd: random.Random) -> str:
    import base64

    return base64.b64encode(rnd.randbytes(32)).decode()


def _service(rnd: random.Random, i: int, group_ids: list[str]) -> Service:
    private = rnd.random() < 0.6
    return Service(
        account_id=ACCT, name=f"s{i}", domain=f"s{i}.{CLUSTER}", private=private,
        enabled=rnd.random() < 0.85,
        access_groups=tuple(rnd.sample(group_ids, rnd.randint(1, len(group_ids))))
        if private else None,
        targets=(Target(target_type="cluster", target_id=CLUSTER, host="backend.lan",
                        port=8080 + i, options=TargetOptions(direct_upstream=True)),),
    )


def _seed(store, rnd: random.Random) -> None:
    store.accounts.create(Account(id=ACCT, domain="r.netbird.test"))
    groups = [store.groups.create(Group(account_id=ACCT, name=f"g{i}")) for i in range(3)]
    peers = [store.peers.create(Peer(account_id=ACCT, name=f"p{i}", key=_key(rnd),
                                     dns_label=f"p{i}"))
             for i in range(rnd.randint(3, 7))]
    peers += [store.peers.create(Peer(account_id=ACCT, name=f"gw{i}", key=_key(rnd), proxy=True,
                                      proxy_cluster=CLUSTER, connected=rnd.random() < 0.5,
                                      endpoint=f"198.18.0.{i + 1}:51820"))
              for i in range(rnd.randint(1, 2))]
    for g in groups:
        members = [p.id for p in peers if not p.proxy and rnd.random() < 0.5]
        if members:
            store.groups.add_peers(ACCT, g.id, members)
    for i in range(rnd.randint(2, 6)):
        store.services.create(_service(rnd, i, [g.id for g in groups]))
    store.users.create(User(account_id=ACCT, id="u-1", email="u1@example.com"))


def _mutate(store, rnd: random.Random, step: int) -> str:
    view = load_account_view(store, ACCT)
    peers = list(view.peers.values())
    services = list(view.services)
    groups = list(view.groups)
    what = rnd.choice(["connect", "connect", "status", "status", "service", "members",
                       "rename", "user", "new-peer", "delete-service"])
    if what == "connect":
        p = rnd.choice(peers)
        store.peers.set_connected(ACCT, p.id, not p.connected)
    elif what == "status" and services:
        s = rnd.choice(services)
        store.services.set_status(ACCT, s.id, rnd.choice(
            [ServiceStatus.ACTIVE, ServiceStatus.PENDING, ServiceStatus.ERROR]))
    elif what == "service" and services:
        s = rnd.choice(services)
        store.services.update(Service(
            id=s.id, account_id=ACCT, name=s.name, domain=s.domain, private=s.private,
            enabled=not s.enabled, access_groups=s.access_groups, targets=s.targets))
    elif what == "members":
        g = rnd.choice(groups)
        p = rnd.choice([p for p in peers if not p.proxy])
        if p.id in view.groups[g].peers:
            store.groups.remove_peers(ACCT, g, [p.id])
        else:
            store.groups.add_peers(ACCT, g, [p.id])
    elif what == "rename":
        p = rnd.choice([p for p in peers if not p.proxy])
        store.peers.update(Peer(id=p.id, account_id=ACCT, name=p.name, key=p.key,
                                dns_label=f"r{step}", groups=p.groups, connected=p.connected))
    elif what == "user":
        store.users.create(User(account_id=ACCT, id=f"u-{step + 2}", email=f"{step}@x.test",
                                blocked=rnd.random() < 0.5))
    elif what == "new-peer":
        store.peers.create(Peer(account_id=ACCT, name=f"n{step}", key=_key(rnd),
                                dns_label=f"n{step}"))
    elif what == "delete-service" and len(services) > 1:
        store.services.delete(ACCT, rnd.choice(services).id)
    return what


def _encodings(nm) -> list[bytes]:
    return [to_proto_network_map(nm, 7, source_prefixes=sp, ipv6=v6).SerializeToString(
        deterministic=True) for sp in (False, True) for v6 in (False, True)]


def _assert_like_fresh(store, cache: MapCache) -> None:
    entry = cache.get(ACCT)
    fresh = load_account_view(store, ACCT)
    assert set(entry.view.peers) == set(fresh.peers)
    for pid in fresh.peers:
        cached = entry.memo(("map", pid), lambda pid=pid: build_network_map(entry.view, pid))
        want = build_network_map(fresh, pid)
        assert network_map_to_json(cached) == network_map_to_json(want)
        assert _encodings(cached) == _encodings(want)
    assert (access_digest(entry.view, entry.users)
            == access_digest(fresh, store.users.list(ACCT)))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_cached_maps_equal_fresh_builds_through_random_changes(store, seed):
    rnd = random.Random(seed)
    _seed(store, rnd)
    cache = MapCache(store)
    hub = PeerUpdateHub(cache.changed)
    store.add_listener(hub.on_change)
    try:
        _assert_like_fresh(store, cache)
        kinds = set()
        for step in range(40):
            kinds.add(_mutate(store, rnd, step))
            _assert_like_fresh(store, cache)
        assert {"connect", "status"} <= kinds
        assert cache.row_reads > 0  # the re-read path was taken, not only full reads
    finally:
        store.remove_listener(hub.on_change)


def test_read_view_is_the_per_table_reads_in_one_transaction(store):
    _seed(store, random.Random(9))
    rows = store.accounts.read_view(ACCT)
    view = load_account_view(store, ACCT)
    assert rows.account == view.account
    assert {p.id: p for p in rows.peers} == dict(view.peers)
    assert list(rows.peers) == list(view.peers.values())
    assert {g.id: g for g in rows.groups} == dict(view.groups)
    assert rows.services == view.services
    assert rows.domains == view.domains
    assert list(rows.users) == store.users.list(ACCT)


def test_status_and_client_connection_cost_no_account_read(store):
    rnd = random.Random(5)
    _seed(store, rnd)
    cache = MapCache(store)
    hub = PeerUpdateHub(cache.changed)
    store.add_listener(hub.on_change)
    try:
        entry = cache.get(ACCT)
        assert cache.full_reads == 1
        built = entry.memo("probe", object)
        client = next(p for p in entry.view.peers.values() if not p.proxy)
        svc = entry.view.services[0]
        for i in range(5):
            store.peers.set_connected(ACCT, client.id, i % 2 == 0)
            store.services.set_status(ACCT, svc.id, ServiceStatus.ACTIVE)
            again = cache.get(ACCT)
            assert again is entry and again.memo("probe", object) is built
        assert cache.full_reads == 1
        # a proxy peer's connection state changes maps (its DNS records): new revision,
        # from a re-read of its row only
        proxy = next(p for p in entry.view.peers.values() if p.proxy)
        store.peers.set_connected(ACCT, proxy.id, not proxy.connected)
        patched = cache.get(ACCT)
        assert patched is not entry and patched.revision > entry.revision
        assert patched.view.peers[proxy.id].connected is not proxy.connected
        assert cache.full_reads == 1
        # a membership change reads the account again
        g = next(iter(entry.view.groups))
        store.groups.add_peers(ACCT, g, [client.id]) if client.id not in \
            entry.view.groups[g].peers else store.groups.remove_peers(ACCT, g, [client.id])
        assert cache.get(ACCT) is not patched and cache.full_reads == 2
    finally:
        store.remove_listener(hub.on_change)


def test_a_change_landing_during_a_read_is_not_lost(store):
    """The change commits after the read's snapshot but before the entry is
    installed: the next get must not return that entry unchanged."""
    _seed(store, random.Random(6))
    cache = MapCache(store)
    hub = PeerUpdateHub(cache.changed)
    store.add_listener(hub.on_change)
    real = store.accounts.read_view
    proxy = next(p for p in load_account_view(store, ACCT).peers.values() if p.proxy)
    fired = threading.Event()

    def read_view_then_change(account_id):
        rows = real(account_id)
        if not fired.is_set():
            fired.set()
            store.peers.set_connected(ACCT, proxy.id, not proxy.connected)
        return rows

    store.accounts.read_view = read_view_then_change
    try:
        first = cache.get(ACCT)
        assert first.view.peers[proxy.id].connected is proxy.connected  # the older snapshot
        second = cache.get(ACCT)
        assert second.view.peers[proxy.id].connected is not proxy.connected
    finally:
        store.accounts.read_view = real
        store.remove_listener(hub.on_change)


def test_entries_are_bounded(store):
    for i in range(4):
        store.accounts.create(Account(id=f"b{i}", domain=""))
    cache = MapCache(store, size=2)
    for i in range(4):
        cache.get(f"b{i}")
    cache.get("b0")  # evicted: read again
    assert cache.full_reads == 5
    cache.changed(ChangeKind.PEER, "b1", ("x",))  # not cached: nothing is kept for it
    assert "b1" not in cache._pending


def test_login_answer_from_peer_and_account_equals_the_full_map(store):
    rnd = random.Random(7)
    _seed(store, rnd)
    view = load_account_view(store, ACCT)
    for peer in view.peers.values():
        found = store.peers.get_by_key_with_account(peer.key)
        assert found is not None
        own = own_network_map(*found)
        full = build_network_map(view, peer.id)
        for v6 in (False, True):
            assert (to_proto_peer_config(own, ipv6=v6).SerializeToString(deterministic=True)
                    == to_proto_peer_config(full, ipv6=v6).SerializeToString(deterministic=True))
    assert store.peers.get_by_key_with_account(_key(rnd)) is None


def test_relevance_rules():
    peer = Peer(id="p", key="k", ip="100.64.0.1")
    assert same_peer_for_maps(peer, Peer(id="p", key="k", ip="100.64.0.1", connected=True))
    assert not same_peer_for_maps(peer, Peer(id="p", key="k", ip="100.64.0.2"))
    gw = Peer(id="g", key="k", ip="100.64.0.9", proxy=True)
    assert not same_peer_for_maps(gw, Peer(id="g", key="k", ip="100.64.0.9", proxy=True,
                                           connected=True))
    svc = Service(id="s", domain="a.b")
    assert same_service_for_maps(svc, Service(id="s", domain="a.b",
                                              meta=ServiceMeta(status=ServiceStatus.ACTIVE)))
    assert not same_service_for_maps(svc, Service(id="s", domain="a.b", enabled=False))


def test_render_builds_each_map_once_per_revision(store, monkeypatch):
    """The servicer's render: a burst of triggers that cannot change the map
    (status reports, a client's connect) builds and sends nothing; the map
    that is sent is the fresh build; a user change (access digest) is sent."""
    _seed(store, random.Random(11))
    server_key = ServerKey.generate()
    servicer = ManagementServicer(store, server_key)
    servicer.start()
    try:
        gw_key = PrivateKey.generate()
        proxy = store.peers.create(Peer(
            account_id=ACCT, name="gw-x", key=encode_wg_key(bytes(gw_key.public_key)),
            proxy=True, proxy_cluster=CLUSTER, connected=True))
        builds: list[str] = []
        real = servicer._encoded
        monkeypatch.setattr(servicer, "_encoded",
                            lambda view, pid, sp, v6: builds.append(pid) or real(view, pid, sp, v6))
        sub = Subscription(ACCT, proxy.id, proxy.key)
        fp, sealed = servicer._render(sub, bytes(gw_key.public_key), True, False, b"")
        assert sealed is not None and builds == [proxy.id]
        got = open_message(sealed.body, pb.SyncResponse(), server_key.public_bytes,
                           bytes(gw_key))
        assert got.NetworkMap.Serial > 0
        got.NetworkMap.Serial = 0
        want = servicer._sync_response(
            build_network_map(load_account_view(store, ACCT), proxy.id), True, False)
        want.NetworkMap.Serial = 0
        assert got.SerializeToString(deterministic=True) == want.SerializeToString(
            deterministic=True)

        view = load_account_view(store, ACCT)
        client = next(p for p in view.peers.values() if not p.proxy)
        for svc in view.services:
            store.services.set_status(ACCT, svc.id, ServiceStatus.ACTIVE)
        store.peers.set_connected(ACCT, client.id, True)
        assert servicer._render(sub, bytes(gw_key.public_key), True, False, fp) == (fp, None)
        assert builds == [proxy.id]

        store.users.create(User(account_id=ACCT, id="u-new", email="new@x.test", blocked=True))
        fp2, sealed2 = servicer._render(sub, bytes(gw_key.public_key), True, False, fp)
        assert fp2 != fp and sealed2 is not None  # same map, new access digest: sent again
        assert builds == [proxy.id, proxy.id]  # a new revision (the account read again)
    finally:
        servicer.close()
