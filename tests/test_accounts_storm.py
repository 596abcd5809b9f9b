"""A peer storm costs the change, not the roster, per network map: the work a
map's application does is counted (sources converted, filter rules installed)
and the objects it keeps are checked (one prefix object per peer address,
shared by the map, the device and the filter), never timed."""

from __future__ import annotations

import ipaddress

from nbgateway._proto import management_pb2 as pb
from nbgateway.mgmt.netmap import convert
from nbgateway.wireguard.keys import generate_private_key, key_to_base64, public_key
from tests.test_accounts import Channel, Mgmt, make, mapping

N = 1000


def v4(i: int) -> str:
    return f"100.64.{(i + 2) // 250}.{(i + 2) % 250 + 1}"


def storm_map(n: int, serial: int, keys: list[str]) -> pb.NetworkMap:
    """The proxy peer's map as management sends it: each user peer by its two
    tunnel addresses, one rule per address and service port."""
    nm = pb.NetworkMap(Serial=serial)
    nm.peerConfig.address = "100.64.0.1/10"
    for i in range(n):
        ips = (v4(i), f"fd00::{i + 2:x}")
        nm.remotePeers.add(wgPubKey=keys[i], allowedIps=[ips[0] + "/32", ips[1] + "/128"])
        for ip in ips:
            for port in ("80", "443"):
                nm.FirewallRules.append(pb.FirewallRule(
                    PolicyID=b"private-access", PeerIP=ip, Direction=pb.IN, Action=pb.ACCEPT,
                    Protocol=pb.TCP, Port=port))
    return nm


def packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def test_each_map_of_a_storm_compiles_only_the_new_peers():
    keys = [key_to_base64(public_key(generate_private_key())) for _ in range(N + 2)]
    store, registry, _, _ = make(Mgmt())
    store.apply_batch([mapping("s1")], False)
    channel = Channel.instances[0]
    runtime = registry.get("acct")
    channel.on_map(convert(storm_map(N, 1, keys)))
    compiler, f = runtime.rule_compiler, runtime.stack.filter
    # 4,000 map rules and two own rules per peer, merged: one rule per port,
    # one for DNS, one for ping
    assert len(f.rules) == 4
    # every rule names every peer: one host set, shared (memory per account)
    assert len({id(r._hosts) for r in f.rules}) == 1 and len(f.rules[0]._hosts) == 2 * N
    # host prefixes go into the filter as they are: nothing converted
    assert compiler.compiled_sources == 0
    for i in (1, 2):
        channel.on_map(convert(storm_map(N + i, 1 + i, keys)))
        assert compiler.compiled_sources == 0
        assert len(f.rules) == 4
        assert len(runtime.device.peers) == N + i
    # one prefix object per address: the roster's, in the map's rules (the
    # merged rules, all of them), the device's reverse index and the filter's host set
    roster = {id(n): n for p in runtime.network.roster for n in p.allowed_ips}
    assert len(roster) == 2 * (N + 2)
    assert {id(h) for h in f.rules[0]._hosts} == set(roster)
    assert {id(n) for p in runtime.device.peers.values() for n in p.allowed_ips} == set(roster)
    assert {id(s) for r in runtime.network.inbound_rules for s in r.sources} == set(roster)
    # the map's 4 rules per peer are 2 merged rules (one per port): no
    # object per map rule is kept
    assert sorted(r.ports for r in runtime.network.inbound_rules) == [((80, 80),), ((443, 443),)]
    newcomer, first = v4(N + 1), v4(0)
    assert f.allows(packed(newcomer), 6, 443) and f.allows(packed(f"fd00::{N + 3:x}"), 6, 80)
    assert f.allows(packed(newcomer), 17, 53) and f.allows(packed(newcomer), 1, None)
    assert not f.allows(packed(newcomer), 6, 22)
    assert not f.allows(packed("100.64.200.1"), 6, 443)
    # the first peer leaves: no longer allowed, nothing compiled
    nm = storm_map(N + 2, 9, keys)
    del nm.remotePeers[0]
    del nm.FirewallRules[0:4]
    channel.on_map(convert(nm))
    assert not f.allows(packed(first), 6, 443) and not f.allows(packed(first), 17, 53)
    assert f.allows(packed(v4(1)), 6, 443)
    assert len(runtime.device.peers) == N + 1
