"""Network maps are applied as roster diffs, and a peer's allowed IPs are set at
the cost of that peer alone (a peer storm is linear, not cubic)."""

from __future__ import annotations

import ipaddress

from nbgateway.mgmt.netmap import RosterPeer
from nbgateway.netstack.prefix import Prefix
from nbgateway.wireguard.allowedips import AllowedIPs
from tests.test_accounts import Mgmt, make, mapping, network, peer


def _ready_runtime(peers):
    store, registry, _mux, _ = make(Mgmt())
    store.apply_batch([mapping("s1")], False)
    runtime = registry.get("acct")
    runtime.apply_network(network(1, peers))
    return runtime


def test_a_new_map_touches_only_the_peers_that_changed():
    peers = [peer(f"100.64.1.{i}") for i in range(1, 200)]
    runtime = _ready_runtime(peers)
    device = runtime.device
    assert len(device.peers) == 199
    calls = []
    original = device.update_peer

    def counting(key, **kw):
        calls.append(key)
        return original(key, **kw)

    device.update_peer = counting
    newcomer = peer("100.64.2.1")
    moved = RosterPeer(peers[5].public_key, peers[5].key_bytes,
                       (ipaddress.ip_network("100.64.3.5/32"),))
    gone = peers[7]
    roster = [p for p in peers if p not in (peers[5], gone)] + [moved, newcomer]
    runtime.apply_network(network(2, roster))
    assert calls == [moved.key_bytes]  # the 196 unchanged peers were not touched
    assert newcomer.key_bytes in device.peers and gone.key_bytes not in device.peers
    assert device.allowed_ips.lookup("100.64.3.5") is device.peers[moved.key_bytes]
    assert device.allowed_ips.lookup("100.64.1.6") is None
    assert device.allowed_ips.lookup("100.64.1.8") is None
    # the same map again changes nothing
    calls.clear()
    runtime.apply_network(network(3, roster))
    assert calls == []


def test_setting_one_peers_networks_does_not_scan_the_roster():
    runtime = _ready_runtime([peer(f"100.64.{i // 250}.{i % 250 + 1}") for i in range(3000)])
    device = runtime.device
    scanned = []
    original = device.allowed_ips.networks_of

    def counting(value):
        scanned.append(value)
        return original(value)

    device.allowed_ips.networks_of = counting
    first, second = list(device.peers.values())[:2]
    # ``second`` takes over ``first``'s address: both views change, nobody else's
    device.update_peer(second.public_key,
                       allowed_ips=[str(first.allowed_ips[0]), str(second.allowed_ips[0])])
    assert len(scanned) <= 3
    assert first.allowed_ips == ()
    assert len(second.allowed_ips) == 2
    assert device.allowed_ips.lookup(str(second.allowed_ips[0].network_address)) is second


def test_allowed_ips_reverse_index_follows_moves_and_removals():
    t: AllowedIPs[object] = AllowedIPs()
    a, b = object(), object()
    assert t.insert("10.0.0.0/24", a) is None
    assert t.insert("10.0.1.0/24", a) is None
    assert t.insert("10.0.0.0/24", a) is None  # re-inserting one's own network
    assert t.insert("10.0.0.0/24", b) is a     # moved: the old owner is named
    assert t.networks_of(a) == (Prefix.parse("10.0.1.0/24"),)
    assert t.networks_of(b) == (Prefix.parse("10.0.0.0/24"),)
    t.remove("10.0.1.0/24")
    assert t.networks_of(a) == ()
    t.remove_value(b)
    assert t.networks_of(b) == () and len(t) == 0 and t.lookup("10.0.0.1") is None
