"""Tenant-set peer endpoints the gateway refuses (tenant isolation).

A tenant's admin sets its peers' WireGuard endpoints; the gateway sends
handshake initiations (and keepalives) to them.  An endpoint on loopback,
link-local, unspecified, multicast or reserved space, or an address of the
gateway host itself, would reflect those packets onto the gateway host's own
services.  The account runtime applies no such endpoint (fail closed: the
peer has no configured endpoint; a peer that sends real packets is still
reached where they come from), counts it by reason and logs it.  The
judgement is the dial guard's (:func:`nbgateway.dial.guard.endpoint_refusal`).
"""

from __future__ import annotations

import ipaddress

import pytest

from nbgateway.accounts import AccountSettings, AccountStats
from nbgateway.dial.guard import GATEWAY_LOCAL, endpoint_refusal
from nbgateway.mgmt.netmap import RosterPeer
from nbgateway.service._accounts import peer_endpoint_refusal
from nbgateway.wireguard.keys import generate_private_key, public_key
from tests.test_accounts import Channel, Mgmt, make, mapping, network


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("64:ff9b::7f00:1", "loopback"),
    ("169.254.169.254", "link_local"), ("fe80::1", "link_local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("255.255.255.255", "reserved"), ("::7f00:1", "ipv4_compatible"),
    ("10.0.0.5", None), ("192.168.1.20", None), ("203.0.113.7", None), ("2001:db8::7", None),
])
def test_the_guards_judgement_of_an_endpoint(address, reason):
    assert endpoint_refusal(ipaddress.ip_address(address), lambda ip: False) == reason


def test_an_address_of_this_host_is_refused():
    mine = ipaddress.ip_address("203.0.113.9")
    local = {mine, ipaddress.ip_address("203.0.113.10")}
    assert endpoint_refusal(mine, local.__contains__) == GATEWAY_LOCAL
    assert endpoint_refusal(ipaddress.ip_address("::ffff:203.0.113.10"),
                            local.__contains__) == GATEWAY_LOCAL
    assert endpoint_refusal(ipaddress.ip_address("203.0.113.7"), local.__contains__) is None


def test_the_gateways_judge_uses_the_hosts_addresses():
    assert peer_endpoint_refusal("127.0.0.1") == "loopback"
    assert peer_endpoint_refusal("not-an-ip") == "invalid_host"
    assert peer_endpoint_refusal("203.0.113.7") is None  # TEST-NET-3: never this host


def roster_peer(ip: str, endpoint: str) -> RosterPeer:
    key = public_key(generate_private_key())
    return RosterPeer(None, key, (ipaddress.ip_network(f"{ip}/32"),), endpoint)


def settings(stats):
    return AccountSettings(cluster="gw.example", endpoint_refusal=peer_endpoint_refusal,
                           stats=stats)


def test_refused_endpoints_are_not_applied_and_counted():
    stats = AccountStats()
    store, registry, _mux, _ = make(Mgmt(), settings=settings(stats))
    store.apply_batch([mapping("s1")], False)
    peers = [roster_peer("100.64.0.1", "127.0.0.1:51820"),
             roster_peer("100.64.0.2", "[::1]:51820"),
             roster_peer("100.64.0.3", "169.254.169.254:51820"),
             roster_peer("100.64.0.4", "[::ffff:127.0.0.1]:51820"),
             roster_peer("100.64.0.5", "203.0.113.7:51820"),
             roster_peer("100.64.0.6", "192.168.1.20:51820")]
    Channel.instances[0].on_map(network(peers=peers))
    device = registry.get("acct").device
    got = {p.allowed_ips[0].network_address.exploded: device.peers[p.key_bytes].endpoint
           for p in peers}
    assert got == {"100.64.0.1": None, "100.64.0.2": None, "100.64.0.3": None,
                   "100.64.0.4": None, "100.64.0.5": ("203.0.113.7", 51820),
                   "100.64.0.6": ("192.168.1.20", 51820)}
    assert stats.endpoints_refused == {"loopback": 3, "link_local": 1}
    # the refused peers are still in the roster (their own packets reach them)
    assert registry.get("acct").in_roster("100.64.0.1")


def test_a_changed_endpoint_is_judged_again():
    stats = AccountStats()
    store, registry, _mux, _ = make(Mgmt(), settings=settings(stats))
    store.apply_batch([mapping("s1")], False)
    good = roster_peer("100.64.0.5", "203.0.113.7:51820")
    Channel.instances[0].on_map(network(peers=[good]))
    device = registry.get("acct").device
    assert device.peers[good.key_bytes].endpoint == ("203.0.113.7", 51820)
    moved = RosterPeer(None, good.key_bytes, good.allowed_ips, "127.0.0.1:22")
    Channel.instances[0].on_map(network(serial=2, peers=[moved]))
    # never the loopback one: the endpoint stays where it was
    assert device.peers[good.key_bytes].endpoint == ("203.0.113.7", 51820)
    assert stats.endpoints_refused == {"loopback": 1}
    # an unchanged map is not judged (nor counted) again
    Channel.instances[0].on_map(network(serial=3, peers=[moved]))
    assert stats.endpoints_refused == {"loopback": 1}


def test_metrics_name_the_counters():
    stats = AccountStats()
    stats.key_rotations = 2
    stats.endpoints_refused["loopback"] += 3
    fams = {f.name: f for f in stats.collect()}
    assert [s.value for s in fams["nbgateway_account_key_rotations"].samples
            if s.name.endswith("_total")] == [2]
    assert [(s.labels, s.value) for s in fams["nbgateway_peer_endpoints_refused"].samples
            if s.name.endswith("_total")] == [({"reason": "loopback"}, 3)]


def test_the_gateway_injects_the_judge_and_exports_the_counters(tmp_path):
    from twisted.internet.task import Clock

    from nbgateway.config import load
    from nbgateway.service import GatewayService

    config = load({"mgmt": "http://127.0.0.1:1", "domain": "gw.test", "wg_port": "51820",
                   "datadir": str(tmp_path), "private": True, "health_addr": ""},
                  {"NB_PROXY_TOKEN": "t"})
    svc = GatewayService(config, reactor=Clock())
    runtime = svc._make_runtime("acct-a")
    assert runtime.settings.endpoint_refusal is peer_endpoint_refusal
    assert runtime.settings.stats is svc.account_stats
    svc.account_stats.endpoints_refused["link_local"] += 1
    text = __import__("prometheus_client").generate_latest(svc.metrics.registry).decode()
    assert 'nbgateway_peer_endpoints_refused_total{reason="link_local"} 1.0' in text
    assert "nbgateway_account_key_rotations_total 0.0" in text
