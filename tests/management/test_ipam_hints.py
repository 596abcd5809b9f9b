"""Peer storms: address allocation from a per-process hint (no full scan per peer).

Two stores on one database (two processes, two replicas) interleave
allocations: addresses stay unique and in the network; after the first peer
a store allocates from its hint without reading every address in use; a
delete through this store makes the freed lowest address the next one again.
"""

from __future__ import annotations

import ipaddress

import pytest

from nbgateway.management import ipam
from nbgateway.management.errors import Conflict
from nbgateway.management.model import Peer


def _peer(account_id: str, name: str) -> Peer:
    return Peer(account_id=account_id, name=name, key=f"key-{name}")


def test_allocation_after_the_first_uses_the_hint_not_a_full_scan(store, account, monkeypatch):
    calls = {"v4": 0, "v6": 0}
    real4, real6 = ipam.allocate_ipv4, ipam.allocate_ipv6

    def count4(network, used):  # type: ignore[no-untyped-def]
        calls["v4"] += 1
        return real4(network, used)

    def count6(network, used):  # type: ignore[no-untyped-def]
        calls["v6"] += 1
        return real6(network, used)

    monkeypatch.setattr(ipam, "allocate_ipv4", count4)
    monkeypatch.setattr(ipam, "allocate_ipv6", count6)
    created = [store.peers.create(_peer(account.id, f"p{i}")) for i in range(40)]
    assert calls == {"v4": 1, "v6": 1}
    assert [p.ip for p in created] == [f"100.64.0.{i}" for i in range(1, 41)]
    assert len({p.ipv6 for p in created}) == 40


def test_two_stores_interleaved_stay_unique(store_factory, account):
    a, b = store_factory(), store_factory()
    made = []
    for i in range(30):
        made.append(a.peers.create(_peer(account.id, f"a{i}")))
        made.append(b.peers.create(_peer(account.id, f"b{i}")))
        if i % 7 == 0:
            made.append(b.peers.create(_peer(account.id, f"bb{i}")))
    listed = a.peers.list(account.id)
    assert len(listed) == len(made)
    assert len({p.ip for p in listed}) == len(listed)
    assert len({p.ipv6 for p in listed}) == len(listed)
    net = ipaddress.ip_network(account.network_v4)
    assert all(ipaddress.ip_address(p.ip) in net for p in listed)
    # densely packed: nothing skipped although each store only knew its own hint
    assert sorted(int(ipaddress.ip_address(p.ip)) for p in listed) == list(
        range(int(net.network_address) + 1, int(net.network_address) + 1 + len(listed))
    )


def test_delete_frees_the_lowest_address_for_the_next_peer(store, account):
    peers = [store.peers.create(_peer(account.id, f"p{i}")) for i in range(5)]
    store.peers.delete(account.id, peers[1].id)
    again = store.peers.create(_peer(account.id, "again"))
    assert again.ip == peers[1].ip
    nxt = store.peers.create(_peer(account.id, "next"))
    assert nxt.ip == "100.64.0.6"


def test_requested_address_checked_against_the_database(store, account):
    first = store.peers.create(_peer(account.id, "first"))
    with pytest.raises(Conflict):
        store.peers.create(Peer(account_id=account.id, name="x", key="key-x", ip=first.ip))
    mine = store.peers.create(Peer(account_id=account.id, name="y", key="key-y", ip="100.64.0.9"))
    assert mine.ip == "100.64.0.9"


def test_window_and_first_free() -> None:
    assert ipam.window("10.0.0.0/29", 4, 0) == [f"10.0.0.{i}" for i in range(1, 7)]
    assert ipam.window("10.0.0.0/29", 4, int(ipaddress.ip_address("10.0.0.7"))) == []
    assert ipam.first_free(["10.0.0.1", "10.0.0.2"], ["10.0.0.1"]) == "10.0.0.2"
    assert ipam.first_free(["10.0.0.1"], ["10.0.0.1"]) is None
