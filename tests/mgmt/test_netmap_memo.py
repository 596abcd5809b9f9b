"""The converter memoizes each peer and record by its serialized bytes: a map
that comes again hands out the same roster peers and records (so the
runtime's identity caches hit), and skip counts stay what a fresh conversion
gives.  Rules are merged instead (one per action, protocols, ports and
policy), their sources the roster's own prefix objects, and decide every
packet as one rule per entry would (random maps against an ipaddress
reference)."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

from nbgateway._proto import management_pb2 as pb
from nbgateway.mgmt import netmap
from nbgateway.netstack.filter import PacketFilter, Rule
from nbgateway.netstack.prefix import Prefix
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
    assert len(second.roster) == 50
    for a, b in zip(first.roster, second.roster[:49], strict=True):
        assert a is b
    # 50 rules of one port and policy: one merged rule naming the 50 peers,
    # by the roster's own prefix objects
    (rule,) = second.inbound_rules
    assert rule.ports == ((443, 443),) and rule.policy_id == "p"
    assert [id(s) for s in rule.sources] == [id(p.allowed_ips[0]) for p in second.roster]
    for a, b in zip(first.zones[0].records, second.zones[0].records[:49], strict=True):
        assert a is b
    want = {"peer_key": 1, "rule_port": 1, "record_name": 1}
    assert first.skipped == want and second.skipped == want  # counted on hits too
    # the memo changes nothing but speed: a cleared memo converts to equal values
    for memo in (netmap._PEERS, netmap._RECORDS):
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


def test_rules_share_the_roster_prefix_objects():
    """A rule's source that is a roster address is the roster's prefix object
    (one small int per address, not one per rule), whether the rule names it
    by PeerIP or sourcePrefixes."""
    for memo in (netmap._PEERS, netmap._RECORDS):
        memo.clear()
    keys = [key_to_base64(public_key(generate_private_key())) for _ in range(3)]
    nm = build(3, 1, keys)
    nm.FirewallRules.append(pb.FirewallRule(PolicyID=b"p", Direction=pb.IN, Action=pb.ACCEPT,
                                            Protocol=pb.TCP, Port="80",
                                            sourcePrefixes=[bytes([100, 64, 1, 3, 32])]))
    net = netmap.convert(nm)
    by_text = {str(n): n for p in net.roster for n in p.allowed_ips}
    sources = [s for r in net.inbound_rules for s in r.sources]
    assert len(sources) == 4  # port 443 (three peers), port 80 (one)
    for s in sources:
        assert s is by_text[str(s)]
    assert not netmap._FRESH  # nothing kept past the conversion
    # a new peer's DNS record shares its name with the peer's fqdn
    names = {p.fqdn: p.fqdn for p in net.roster}
    for rec in net.zones[0].records:
        assert rec.name is names[rec.name]
    # merged rules naming the same addresses share one source tuple
    nm = build(3, 3, [key_to_base64(public_key(generate_private_key())) for _ in range(3)])
    nm.FirewallRules.append(pb.FirewallRule(PolicyID=b"q", PeerIP="100.64.7.7", Direction=pb.IN,
                                            Action=pb.ACCEPT, Protocol=pb.TCP, Port="80"))
    nm.FirewallRules.append(pb.FirewallRule(PolicyID=b"q", PeerIP="100.64.7.7", Direction=pb.IN,
                                            Action=pb.ACCEPT, Protocol=pb.TCP, Port="443"))
    a, b = netmap.convert(nm).inbound_rules[-2:]
    assert a.ports != b.ports and a.sources is b.sources
    # the same addresses under new keys: equal rules, the new peers' prefixes
    keys = [key_to_base64(public_key(generate_private_key())) for _ in range(3)]
    again = netmap.convert(build(3, 2, keys))
    assert again.inbound_rules == net.inbound_rules[:1]
    assert again.inbound_rules[0].sources[0] is again.roster[0].allowed_ips[0]


def _reference_allows(nm: pb.NetworkMap, src: str, proto: int, port: int | None) -> bool:
    """One rule per IN entry, DROP entries first, first match wins, default
    deny: the per-entry reading of the map, with ipaddress."""
    addr = ipaddress.ip_address(src)
    protos = {pb.ALL: set(), pb.TCP: {6}, pb.UDP: {17}, pb.ICMP: {1, 58}}
    entries = [r for r in nm.FirewallRules if r.Direction == pb.IN]
    for want in (pb.DROP, pb.ACCEPT):
        for r in entries:
            if r.Action != want:
                continue
            if r.sourcePrefixes:
                nets = [ipaddress.ip_network((bytes(raw[:-1]), raw[-1]), strict=False)
                        for raw in r.sourcePrefixes]
            else:
                try:
                    peer = ipaddress.ip_address(r.PeerIP)
                except ValueError:  # a rule without a usable source is no rule
                    continue
                nets = [ipaddress.ip_network("0.0.0.0/0" if peer.version == 4 else "::/0")
                        if peer.is_unspecified else ipaddress.ip_network(peer)]
            if not any(addr.version == n.version and addr in n for n in nets):
                continue
            if protos[r.Protocol] and proto not in protos[r.Protocol]:
                continue
            if r.Protocol in (pb.TCP, pb.UDP) and r.Port and port != int(r.Port):
                continue
            return want == pb.ACCEPT
    return False


def test_merged_rules_decide_as_one_rule_per_entry():
    rng = random.Random(18)
    for _ in range(30):
        nm = pb.NetworkMap(Serial=1)
        addrs = [f"100.64.{rng.randrange(4)}.{rng.randrange(1, 8)}" for _ in range(6)]
        addrs += [f"fd00::{rng.randrange(1, 8):x}" for _ in range(3)]
        for _ in range(rng.randrange(1, 25)):
            rule = pb.FirewallRule(
                PolicyID=rng.choice([b"a", b"b"]),
                Direction=rng.choice([pb.IN, pb.IN, pb.OUT]),
                Action=rng.choice([pb.ACCEPT, pb.ACCEPT, pb.DROP]),
                Protocol=rng.choice([pb.TCP, pb.UDP, pb.ICMP, pb.ALL]),
                Port=rng.choice(["", "80", "443"]))
            src = rng.choice([*addrs, "0.0.0.0", "bogus"])
            if rng.random() < 0.3 and src != "bogus":
                net = ipaddress.ip_network(f"{src}/{rng.choice([16, 24, 32])}"
                                           if ":" not in src else f"{src}/{rng.choice([64, 128])}",
                                           strict=False)
                rule.sourcePrefixes.append(net.network_address.packed + bytes([net.prefixlen]))
            else:
                rule.PeerIP = src
            nm.FirewallRules.append(rule)
        out = netmap.convert(nm)
        f = PacketFilter([Rule.make(**r.rule_kwargs()) for r in out.inbound_rules],
                         default=netmap.DEFAULT_ACTION)
        probes = [*addrs, "100.64.9.9", "fd00::99", "100.64.0.200"]
        for src in probes:
            packed = ipaddress.ip_address(src).packed
            for proto, port in ((6, 80), (6, 443), (17, 80), (6, 22), (1, None), (58, None)):
                assert f.allows(packed, proto, port) == _reference_allows(nm, src, proto, port), (
                    src, proto, port)


def test_peer_ip_fast_path_reads_as_ipaddress_does():
    for text in ("100.64.0.1", "0.0.0.0", "::", "fd00::1", "::ffff:1.2.3.4", "FD00::1",
                 "fd00:0::1", "100.064.0.1", "1.2.3", "fe80::1%eth0", "", "x", "1.2.3.4/32",
                 "2001:db8::", "255.255.255.255", "256.1.1.1", " 1.2.3.4", "1.2.3.4 ", "0x1.2.3.4",
                 "1.2.3.4.5", "01.2.3.4", "1..2.3", "\u0661.2.3.4", "1.2.3.-4", "1.2.3.+4",
                 "::1.2.3.4", "1.2.3.4\x00"):
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            assert netmap._peer_ip_source(text) is None, text
            continue
        want = (Prefix.parse("0.0.0.0/0" if addr.version == 4 else "::/0") if addr.is_unspecified
                else Prefix.of(addr.version, int(addr), addr.max_prefixlen))
        assert netmap._peer_ip_source(text) == want, text


def test_records_share_their_ttl():
    for memo in (netmap._PEERS, netmap._RECORDS):
        memo.clear()
    keys = [key_to_base64(public_key(generate_private_key())) for _ in range(4)]
    nm = build(4, 1, keys)
    for r in nm.DNSConfig.CustomZones[0].Records:
        r.TTL = 3600
    records = netmap.convert(nm).zones[0].records
    assert len(records) == 4 and {r.ttl for r in records} == {3600}
    assert len({id(r.ttl) for r in records}) == 1


def test_memo_keys_are_keyed_digests_not_serializations():
    for memo in (netmap._PEERS, netmap._RECORDS):
        memo.clear()
    keys = [key_to_base64(public_key(generate_private_key())) for _ in range(5)]
    first = netmap.convert(build(5, 1, keys))
    assert netmap._PEERS.entries and netmap._RECORDS.entries
    for memo in (netmap._PEERS, netmap._RECORDS):
        # 128-bit digests kept as ints (a 48-byte block each)
        assert all(type(k) is int and 0 <= k < 1 << 128 for k in memo.entries)
        assert any(k >> 96 for k in memo.entries)
    # same entry -> same key; any change in the bytes -> another key
    assert netmap._memo_key(b"peer entry") == netmap._memo_key(b"peer entry")
    assert netmap._memo_key(b"peer entry") != netmap._memo_key(b"peer entrz")
    second = netmap.convert(build(5, 1, keys))
    assert [a is b for a, b in zip(first.roster, second.roster, strict=True)] == [True] * 5


def test_raw_source_reads_as_the_decoder_and_shares_roster_prefixes():
    """``sourcePrefixes`` entries are looked up in the roster's prefixes by
    their encoding read as one int: the same source as decoding them (host
    bits cleared, bad lengths and sizes refused), and the roster's own object
    when it is a roster address."""
    roster = tuple(
        netmap.RosterPeer(None, bytes([i]) * 32, (Prefix.parse(f"100.64.0.{i}/32"),
                                                  Prefix.parse(f"fd00::{i:x}/128")))
        for i in range(1, 6))
    known = {n: n for p in roster for n in p.allowed_ips}
    rng = random.Random(5)
    raws = []
    for _ in range(3000):
        if rng.random() < 0.5:
            addr = bytes([100, 64, 0, rng.randrange(0, 8)]) if rng.random() < 0.7 else \
                rng.randbytes(4)
            length = rng.choice([32, 32, 31, 24, 8, 0, 33, 255])
        else:
            addr = bytes.fromhex("fd00" + "00" * 13) + bytes([rng.randrange(0, 8)]) \
                if rng.random() < 0.7 else rng.randbytes(16)
            length = rng.choice([128, 128, 127, 64, 0, 129, 255])
        raw = addr + bytes([length])
        if rng.random() < 0.05:
            raw = raw[:rng.choice([0, 3, 4, 6, 16, 18])] if rng.random() < 0.5 else raw + b"\0"
        raws.append(raw)
    for raw in raws:
        parts = netmap._RuleParts(roster)
        want = netmap._decode_prefix(raw)
        got = parts.raw_source(raw)
        assert got == want, raw.hex()
        if want is not None and want in known:
            assert got is known[want], raw.hex()
