"""nbgateway.mgmt.netmap: NetworkMap protobuf -> AccountNetwork values."""

from __future__ import annotations

import base64
import ipaddress
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway._proto import management_pb2 as pb
from nbgateway.management.model import Peer
from nbgateway.management.networkmap import (
    DIRECTION_IN,
    FirewallRule,
    NetworkMap,
    RemotePeer,
    to_proto_network_map,
)
from nbgateway.management.synthetic import CustomZone, PortRange, SimpleRecord
from nbgateway.mgmt import netmap
from nbgateway.netstack.filter import DENY, PacketFilter, Rule
from nbgateway.netstack.prefix import Prefix


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def proxy_map(user_key: str, *, source_prefixes: bool = False) -> pb.NetworkMap:
    """The proxy peer's map as the real management encodes it (fixture F)."""
    nm = NetworkMap(
        peer=Peer(account_id="acct-1", name="proxy", key=key(), ip="100.64.0.99",
                  dns_label="proxy", proxy=True),
        address="100.64.0.99/10",
        fqdn="proxy.netbird.test",
        remote_peers=(RemotePeer(id="u", key=user_key, allowed_ips=("100.64.0.10/32",),
                                 fqdn="laptop.netbird.test"),),
        firewall_rules=tuple(
            FirewallRule("private-access-svc-1-proxy", "100.64.0.10", DIRECTION_IN, "accept",
                         "tcp", port_range=PortRange(p, p))
            for p in (80, 443)
        ),
        zones=(
            CustomZone("netbird.test.", (
                SimpleRecord("proxy.netbird.test.", 1, "IN", 300, "100.64.0.99"),
                SimpleRecord("laptop.netbird.test.", 1, "IN", 300, "100.64.0.10"),
            )),
            CustomZone("eu.proxy.netbird.io.", (
                SimpleRecord("MyApp.eu.proxy.netbird.io.", 1, "IN", 5, "100.64.0.99"),
            ), search_domain_disabled=True, non_authoritative=True),
        ),
    )
    return to_proto_network_map(nm, 42, source_prefixes=source_prefixes)


def test_real_management_encoding_converts():
    user = key()
    out = netmap.convert(proxy_map(user))
    assert out.serial == 42
    assert out.address == ipaddress.ip_interface("100.64.0.99/10")
    assert out.addresses == ("100.64.0.99",)
    assert out.fqdn == "proxy.netbird.test."
    assert out.roster == (netmap.RosterPeer(
        public_key=user, key_bytes=base64.b64decode(user),
        allowed_ips=(Prefix.parse("100.64.0.10/32"),),
        fqdn="laptop.netbird.test."),)
    assert out.peer(user) is out.roster[0] and out.peer(key()) is None
    zones = {z.domain: z for z in out.zones}
    assert set(zones) == {"netbird.test.", "eu.proxy.netbird.io."}
    synth = zones["eu.proxy.netbird.io."]
    assert not synth.authoritative and synth.search_domain_disabled
    assert synth.records == (netmap.DnsRecord("myapp.eu.proxy.netbird.io.", 1, 5, "100.64.0.99"),)
    assert zones["netbird.test."].authoritative
    assert [(r.sources, r.protocols, r.ports, r.action) for r in out.inbound_rules] == [
        ((Prefix.parse("100.64.0.10/32"),), frozenset({6}), ((80, 80),), "allow"),
        ((Prefix.parse("100.64.0.10/32"),), frozenset({6}), ((443, 443),), "allow"),
    ]
    assert out.inbound_rules[0].policy_id == "private-access-svc-1-proxy"
    assert out.skipped == {}


def test_source_prefixes_preferred_over_peer_ip():
    m = proxy_map(key(), source_prefixes=True)
    for r in m.FirewallRules:
        r.PeerIP = "100.64.0.77"  # legacy field disagrees: sourcePrefixes wins
    out = netmap.convert(m)
    assert {r.sources for r in out.inbound_rules} == {(Prefix.parse("100.64.0.10/32"),)}


def test_rules_drive_the_netstack_filter():
    out = netmap.convert(proxy_map(key()))
    rules = [Rule.make(**r.rule_kwargs()) for r in out.inbound_rules]
    dns = netmap.dns_rule(out.roster)
    rules.append(Rule.make(**dns.rule_kwargs()))
    f = PacketFilter(rules, default=netmap.DEFAULT_ACTION)
    member, stranger = ip("100.64.0.10"), ip("100.64.0.11")
    assert f.allows(member, 6, 443) and f.allows(member, 6, 80)
    assert not f.allows(member, 6, 22)
    assert f.allows(member, 17, 53) and f.allows(member, 6, 53)
    assert not f.allows(stranger, 6, 443) and not f.allows(stranger, 17, 53)
    assert not f.allows(member, 1, None)  # no ICMP rule: denied by default
    assert netmap.dns_rule(()) is None


def test_outbound_rules_ignored_and_drop_rules_first():
    m = pb.NetworkMap(Serial=1)
    m.peerConfig.address = "100.64.0.1/10"
    m.FirewallRules.add(PeerIP="100.64.0.5", Direction=pb.OUT, Action=pb.ACCEPT, Protocol=pb.ALL)
    m.FirewallRules.add(PeerIP="0.0.0.0", Direction=pb.IN, Action=pb.ACCEPT, Protocol=pb.ALL,
                        Port="80")
    m.FirewallRules.add(PeerIP="100.64.0.6", Direction=pb.IN, Action=pb.DROP, Protocol=pb.TCP,
                        Port="1000-2000")
    m.FirewallRules.add(PeerIP="100.64.0.7", Direction=pb.IN, Action=pb.ACCEPT,
                        Protocol=pb.NETBIRD_SSH)
    m.FirewallRules.add(PeerIP="100.64.0.8", Direction=pb.IN, Action=pb.ACCEPT,
                        Protocol=pb.CUSTOM, customProtocol=47)
    m.FirewallRules.add(PeerIP="100.64.0.9", Direction=pb.IN, Action=pb.ACCEPT, Protocol=pb.ICMP)
    out = netmap.convert(m)
    got = [(r.action, r.sources, r.protocols, r.ports) for r in out.inbound_rules]
    net = Prefix.parse
    assert got == [
        ("deny", (net("100.64.0.6/32"),), frozenset({6}), ((1000, 2000),)),
        ("allow", (net("0.0.0.0/0"),), frozenset(), ()),  # ALL: ports do not apply
        ("allow", (net("100.64.0.7/32"),), frozenset({6}), ((22, 22),)),
        ("allow", (net("100.64.0.8/32"),), frozenset({47}), ()),
        ("allow", (net("100.64.0.9/32"),), frozenset({1, 58}), ()),
    ]


def test_malformed_entries_are_skipped_and_counted():
    m = pb.NetworkMap(Serial=7)
    m.peerConfig.address = "not an address"
    m.peerConfig.address_v6 = b"\x01\x02"
    good = key()
    m.remotePeers.add(wgPubKey="short", allowedIps=["100.64.0.1/32"])
    m.remotePeers.add(wgPubKey=good, allowedIps=["100.64.0.2/32", "garbage", "fd00::2/128"])
    m.FirewallRules.add(PeerIP="x", Direction=pb.IN, Protocol=pb.TCP, Port="80")
    m.FirewallRules.add(PeerIP="100.64.0.2", Direction=pb.IN, Protocol=pb.TCP, Port="99999")
    m.FirewallRules.add(PeerIP="100.64.0.2", Direction=pb.IN, Protocol=pb.UNKNOWN)
    m.FirewallRules.add(Direction=pb.IN, Protocol=pb.TCP, Port="80")  # no source at all
    r = m.FirewallRules.add(Direction=pb.IN, Protocol=pb.UDP, Port="53")
    r.sourcePrefixes.append(b"\x01")
    z = m.DNSConfig.CustomZones.add(Domain="example.com")
    z.Records.add(Name="a.example.com", Type=1, Class="IN", TTL=-3, RData="100.64.0.2")
    z.Records.add(Name="v6.example.com.", Type=28, Class="IN", TTL=2**40, RData="fd00::2")
    z.Records.add(Name="b.example.com.", Type=1, Class="CH", TTL=5, RData="100.64.0.2")
    z.Records.add(Name="other.org.", Type=1, Class="IN", TTL=5, RData="100.64.0.2")
    z.Records.add(Name="c.example.com.", Type=1, Class="IN", TTL=5, RData="fd00::1")
    z.Records.add(Name="d.example.com.", Type=5, Class="IN", TTL=5, RData="a.example.com.")
    z.Records.add(Name="e.example.com.", Type=1, Class="IN", TTL=5, RData="1.2.3")
    m.DNSConfig.CustomZones.add(Domain="")
    m.DNSConfig.CustomZones.add(Domain="x" * 70 + ".com")
    out = netmap.convert(m)
    assert out.address is None and out.address_v6 is None and out.addresses == ()
    assert [p.public_key for p in out.roster] == [good]
    assert out.roster[0].allowed_ips == (Prefix.parse("100.64.0.2/32"),
                                         Prefix.parse("fd00::2/128"))
    assert out.inbound_rules == ()
    assert out.zones == (netmap.DnsZone("example.com.", (
        netmap.DnsRecord("a.example.com.", 1, 0, "100.64.0.2"),
        netmap.DnsRecord("v6.example.com.", 28, netmap.MAX_TTL, "fd00::2"),
    )),)
    assert out.skipped == {
        "own_address": 1, "own_address_v6": 1, "peer_key": 1, "peer_allowed_ip": 1,
        "rule_source": 2, "rule_port": 1, "rule_protocol": 1, "rule_no_source": 3,
        "record_class": 1, "record_name": 1, "record_type": 1, "record_rdata": 2,
        "zone_name": 2,
    }


def test_ipv6_own_address_and_duplicate_zones_merge():
    m = pb.NetworkMap(Serial=1)
    m.peerConfig.address = "100.64.0.1/10"
    m.peerConfig.address_v6 = ipaddress.ip_address("fd00::1").packed + bytes([64])
    a = m.DNSConfig.CustomZones.add(Domain="Zone.Test.", NonAuthoritative=True)
    a.Records.add(Name="x.zone.test.", Type=1, Class="IN", TTL=5, RData="100.64.0.1")
    b = m.DNSConfig.CustomZones.add(Domain="zone.test")
    b.Records.add(Name="x.zone.test.", Type=28, Class="IN", TTL=5, RData="fd00::1")
    b.Records.add(Name="x.zone.test.", Type=1, Class="IN", TTL=5, RData="100.64.0.1")
    out = netmap.convert(m)
    assert out.address_v6 == ipaddress.ip_interface("fd00::1/64")
    assert out.addresses == ("100.64.0.1", "fd00::1")
    (z,) = out.zones
    assert z.domain == "zone.test." and z.authoritative
    assert [r.type for r in z.records] == [1, 28]


def test_bounds(monkeypatch):
    monkeypatch.setattr(netmap, "MAX_REMOTE_PEERS", 3)
    monkeypatch.setattr(netmap, "MAX_RECORDS", 2)
    monkeypatch.setattr(netmap, "MAX_ZONES", 1)
    m = pb.NetworkMap()
    for _ in range(5):
        m.remotePeers.add(wgPubKey=key(), allowedIps=["100.64.0.2/32"])
    z = m.DNSConfig.CustomZones.add(Domain="a.test")
    for i in range(4):
        z.Records.add(Name=f"h{i}.a.test", Type=1, Class="IN", TTL=5, RData="100.64.0.2")
    m.DNSConfig.CustomZones.add(Domain="b.test")
    out = netmap.convert(m)
    assert len(out.roster) == 3 and sum(len(z.records) for z in out.zones) == 2
    assert out.skipped == {"peer_limit": 2, "record_limit": 2, "zone_limit": 1}


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_convert_is_total_on_arbitrary_messages(data):
    m = pb.NetworkMap()
    try:
        m.ParseFromString(data)
    except Exception:
        return
    out = netmap.convert(m)  # never raises
    for r in out.inbound_rules:
        Rule.make(**r.rule_kwargs())
    assert all(z.domain.endswith(".") for z in out.zones)
    assert DENY == netmap.DEFAULT_ACTION
