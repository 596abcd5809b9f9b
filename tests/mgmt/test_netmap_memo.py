"""The converter memoizes each entry by its serialized bytes: a map that comes
again hands out the same roster peers, rules and records (so the runtime's
identity caches hit), and skip counts stay what a fresh conversion gives."""

from __future__ import annotations

from collections import Counter

from nbgateway._proto import management_pb2 as pb
from nbgateway.mgmt import netmap
from nbgateway.wireguard.keys import generate_private_key, key_to_base64, public_key


def build(n: int, serial: int, keys: list[str]) -> pb.NetworkMap:
    nm = pb.NetworkMap(Serial=serial)
    nm.peerConfig.address = "100.64.0.1/10"
    zone = nm.DNSConfig.CustomZones.add(Domain="netbird.test")
    for i in range(n):
        v4 = f"100.64.1.{i + 2}"
        nm.remotePeers.add(wgPubKey=keys[i], allowedIps=[f"{v4}/32"], fqdn=f"p{i}.netbird.test")
        nm.FirewallRules.append(pb.FirewallRule(PolicyID=b"p", PeerIP=v4, Direction=pb.IN,
                                                Action=pb.ACCEPT, Protocol=pb.TCP, Port="443"))
        zone.Records.add(Name=f"p{i}.netbird.test", Type=1, Class="IN", TTL=60, RData=v4)
    # entries that are skipped: a bad key, a bad rule port, a record outside the zone
    nm.remotePeers.add(wgPubKey="not a key", allowedIps=["100.64.9.9/32"])
    nm.FirewallRules.append(pb.FirewallRule(PeerIP="100.64.1.2", Direction=pb.IN,
                                            Protocol=pb.TCP, Port="99999"))
    zone.Records.add(Name="elsewhere.example", Type=1, Class="IN", TTL=60, RData="1.2.3.4")
    return nm


def test_a_repeated_map_reuses_every_converted_entry():
    keys = [key_to_base64(public_key(generate_private_key())) for _ in range(50)]
    first = netmap.convert(build(49, 1, keys))
    second = netmap.convert(build(50, 2, keys))
    assert len(second.roster) == 50 and len(second.inbound_rules) == 50
    for a, b in zip(first.roster, second.roster[:49], strict=True):
        assert a is b
    for a, b in zip(first.inbound_rules, second.inbound_rules[:49], strict=True):
        assert a is b
    for a, b in zip(first.zones[0].records, second.zones[0].records[:49], strict=True):
        assert a is b
    want = {"peer_key": 1, "rule_port": 1, "record_name": 1}
    assert first.skipped == want and second.skipped == want  # counted on hits too
    assert hash(second.inbound_rules[0]) == hash(first.inbound_rules[0])
    # the memo changes nothing but speed: a cleared memo converts to equal values
    for memo in (netmap._RULES, netmap._PEERS, netmap._RECORDS):
        memo.clear()
    again = netmap.convert(build(50, 2, keys))
    assert again == second and again.skipped == second.skipped
    assert again.roster[0] is not second.roster[0]


def test_the_memo_is_bounded():
    memo = netmap._Memo(3)
    skipped: Counter[str] = Counter()
    for i in range(10):
        assert memo.convert(i, lambda why, i=i: i * 2, skipped) == i * 2
    assert list(memo.entries) == [7, 8, 9]

    def bad(why):
        why["x"] += 1

    memo.convert("bad", bad, skipped)
    memo.convert("bad", bad, skipped)
    assert skipped == {"x": 2}


def test_new_rules_share_the_new_peers_prefix_objects():
    """A rule converted in the same map as its peer shares the peer's prefix
    (one small int per address, not one per rule); a rule the memo already
    holds keeps its own (equal) prefix."""
    for memo in (netmap._RULES, netmap._PEERS, netmap._RECORDS):
        memo.clear()
    keys = [key_to_base64(public_key(generate_private_key())) for _ in range(3)]
    nm = build(3, 1, keys)
    nm.FirewallRules.append(pb.FirewallRule(PolicyID=b"p", Direction=pb.IN, Action=pb.ACCEPT,
                                            Protocol=pb.TCP, Port="80",
                                            sourcePrefixes=[bytes([100, 64, 1, 3, 32])]))
    net = netmap.convert(nm)
    by_text = {str(n): n for p in net.roster for n in p.allowed_ips}
    sources = [s for r in net.inbound_rules for s in r.sources]
    assert len(sources) == 4
    for s in sources:
        assert s is by_text[str(s)]
    assert not netmap._FRESH  # nothing kept past the conversion
    # a new peer's DNS record shares its name with the peer's fqdn
    names = {p.fqdn: p.fqdn for p in net.roster}
    for rec in net.zones[0].records:
        assert rec.name is names[rec.name]
    # rules naming one address share one source tuple
    nm = build(3, 3, [key_to_base64(public_key(generate_private_key())) for _ in range(3)])
    nm.FirewallRules.append(pb.FirewallRule(PolicyID=b"q", PeerIP="100.64.7.7", Direction=pb.IN,
                                            Action=pb.ACCEPT, Protocol=pb.TCP, Port="80"))
    nm.FirewallRules.append(pb.FirewallRule(PolicyID=b"q", PeerIP="100.64.7.7", Direction=pb.IN,
                                            Action=pb.ACCEPT, Protocol=pb.TCP, Port="443"))
    a, b = netmap.convert(nm).inbound_rules[-2:]
    assert a.ports != b.ports and a.sources is b.sources
    # the same addresses under new keys: the rules are memo hits, equal values
    keys = [key_to_base64(public_key(generate_private_key())) for _ in range(3)]
    again = netmap.convert(build(3, 2, keys))
    assert [r.sources for r in again.inbound_rules] == [
        r.sources for r in net.inbound_rules[:3]]
