"""IPv6 overlay in the network map (issue 11 item 7).

A peer with an IPv6 tunnel address gets its own v6 address in
``PeerConfig.address_v6``, every remote peer's ``/128`` next to its ``/32``,
firewall rules for the remote peers' v6 addresses and AAAA records in the
peers zone.  The last tests push the encoded map through the gateway's
conversion (``nbgateway.mgmt.netmap.convert``) and DNS authority, which is
what the proxy peer applies: without the v6 parts every IPv6 packet from a
stock peer is dropped as ``disallowed_source``.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from twisted.names import dns

from nbgateway._proto import management_pb2 as pb
from nbgateway.dns.zone import ZoneAuthority, account_zones
from nbgateway.management.model import Account, Group, Peer
from nbgateway.management.networkmap import (
    DIRECTION_IN,
    DIRECTION_OUT,
    build_network_map,
    network_map_to_json,
    to_proto_network_map,
)
from nbgateway.management.synthetic import AccountView, load_account_view
from nbgateway.mgmt.netmap import DEFAULT_ACTION, convert, dns_rule, echo_rule
from nbgateway.netstack.filter import PacketFilter, Rule
from tests.management.test_networkmap import private_service
from tests.management.test_synthetic import _other_peer, _proxy_peer, _service, _user_peer, fixture

NET6 = "fd12:3456:789a::/64"
USER6 = "fd12:3456:789a::10"
PROXY6 = "fd12:3456:789a::99"
USER_KEY = "U" * 43 + "="
PROXY_KEY = "P" * 43 + "="


def v6_map(nm, serial: int = 1, **kw) -> pb.NetworkMap:
    """The proto map as a client announcing the IPv6 overlay capability gets it."""
    return to_proto_network_map(nm, serial, ipv6=True, **kw)


def v6_fixture(*, user_v6: str | None = USER6, proxy_v6: str | None = PROXY6) -> AccountView:
    base = fixture()
    account = Account(id="acct-1", domain="netbird.test", network_v4="100.64.0.0/10",
                      network_v6=NET6)
    # real (base64, 32-byte) keys: the gateway's conversion drops anything else
    peers = [_user_peer(ipv6=user_v6, dns_label="laptop", key=USER_KEY),
             _proxy_peer(ipv6=proxy_v6, dns_label="proxy-1", key=PROXY_KEY)]
    return AccountView.of(account, peers, list(base.groups.values()), [_service()], ())


def _rules(nm, direction):
    return sorted(
        (r.peer_ip, r.port_range.start) for r in nm.firewall_rules if r.direction == direction
    )


def test_remote_peer_allowed_ips_are_v4_32_and_v6_128():
    view = v6_fixture()
    user = build_network_map(view, "user-peer")
    assert user.remote_peers[0].allowed_ips == ("100.64.0.99/32", f"{PROXY6}/128")
    proxy = build_network_map(view, "proxy-peer")
    assert proxy.remote_peers[0].allowed_ips == ("100.64.0.10/32", f"{USER6}/128")


def test_own_v6_address_with_the_account_prefix():
    nm = build_network_map(v6_fixture(), "proxy-peer")
    assert nm.address == "100.64.0.99/10"
    assert nm.address_v6 == f"{PROXY6}/64"
    assert network_map_to_json(nm)["address_v6"] == f"{PROXY6}/64"


def test_firewall_rules_cover_the_v6_source():
    proxy = build_network_map(v6_fixture(), "proxy-peer")
    assert _rules(proxy, DIRECTION_IN) == [
        ("100.64.0.10", 80), ("100.64.0.10", 443), (USER6, 80), (USER6, 443),
    ]
    user = build_network_map(v6_fixture(), "user-peer")
    assert _rules(user, DIRECTION_OUT) == [
        ("100.64.0.99", 80), ("100.64.0.99", 443), (PROXY6, 80), (PROXY6, 443),
    ]


def test_peers_zone_has_aaaa_records():
    nm = build_network_map(v6_fixture(), "user-peer")
    peers_zone = nm.zones[0]
    assert sorted((r.name, r.type, r.rdata) for r in peers_zone.records) == [
        ("laptop.netbird.test.", 1, "100.64.0.10"),
        ("laptop.netbird.test.", 28, USER6),
        ("proxy-1.netbird.test.", 1, "100.64.0.99"),
        ("proxy-1.netbird.test.", 28, PROXY6),
    ]


def test_peer_without_v6_gets_the_v4_only_map():
    """A peer that has no IPv6 address itself could not route v6: nothing v6 for it,
    even when its remote peers have v6 addresses."""
    view = v6_fixture(user_v6=None)
    user = build_network_map(view, "user-peer")
    assert user.address_v6 == ""
    assert user.remote_peers[0].allowed_ips == ("100.64.0.99/32",)
    assert {r.peer_ip for r in user.firewall_rules} == {"100.64.0.99"}
    assert not v6_map(user).peerConfig.address_v6
    # and the proxy only learns the user's v4 address
    proxy = build_network_map(view, "proxy-peer")
    assert proxy.remote_peers[0].allowed_ips == ("100.64.0.10/32",)
    assert {r.peer_ip for r in proxy.firewall_rules} == {"100.64.0.10"}


def test_non_member_still_gets_nothing():
    base = v6_fixture()
    other = dataclasses.replace(_other_peer(), ipv6="fd12:3456:789a::11")
    view = AccountView.of(base.account, [*base.peers.values(), other],
                          list(base.groups.values()), [_service()], ())
    nm = build_network_map(view, "other-peer")
    assert nm.remote_peers == () and nm.firewall_rules == ()
    assert "other-peer" not in [p.id for p in build_network_map(view, "proxy-peer").remote_peers]


def test_proto_encoding_round_trips_through_the_gateway_conversion():
    nm = build_network_map(v6_fixture(), "proxy-peer")
    for source_prefixes in (False, True):
        wire = v6_map(nm, 7, source_prefixes=source_prefixes).SerializeToString()
        msg = pb.NetworkMap.FromString(wire)
        assert msg.peerConfig.address_v6 == ipaddress.ip_address(PROXY6).packed + bytes([64])
        net = convert(msg)
        assert net.skipped == {}
        assert net.address_v6 == ipaddress.ip_interface(f"{PROXY6}/64")
        assert net.addresses == ("100.64.0.99", PROXY6)
        assert tuple(map(str, net.roster[0].allowed_ips)) == (
            "100.64.0.10/32", str(ipaddress.ip_network(f"{USER6}/128")))
        sources = {str(s) for r in net.inbound_rules for s in r.sources}
        assert str(ipaddress.ip_network(f"{USER6}/128")) in sources


def test_gateway_dns_answers_aaaa_for_a_served_domain():
    """The proxy peer's map gives the gateway its v6 address; its DNS authority
    then answers AAAA (and A) for the private service names it serves."""
    nm = build_network_map(v6_fixture(), "proxy-peer")
    net = convert(pb.NetworkMap.FromString(v6_map(nm, 3).SerializeToString()))
    auth = ZoneAuthority(account_zones(net, ["myapp.eu.proxy.netbird.io"]))
    aaaa = auth.lookup(b"myapp.eu.proxy.netbird.io", dns.AAAA)
    assert aaaa.rcode == dns.OK
    assert [rr.payload.address for rr in aaaa.answers] == [dns.Record_AAAA(PROXY6).address]
    a = auth.lookup(b"myapp.eu.proxy.netbird.io", dns.A)
    assert [rr.payload.dottedQuad() for rr in a.answers] == ["100.64.0.99"]


def test_from_store_peers_get_v6_addresses_and_maps(store, account):
    """Through the real store: peers are allocated IPv6 addresses from the
    account's ULA /64 and the map carries them."""
    user = store.peers.create(Peer(account_id=account.id, name="laptop", key="k-user"))
    proxy = store.peers.create(Peer(account_id=account.id, name="proxy-1", key="k-proxy",
                                   proxy=True, proxy_cluster="eu.proxy.netbird.io",
                                   connected=True, ephemeral=True))
    assert user.ipv6 and proxy.ipv6
    store.groups.create(Group(id="grp-admins", account_id=account.id, name="admins",
                             peers=(user.id,)))
    store.services.create(private_service(account.id, ("grp-admins",)))
    view = load_account_view(store, account.id)
    pm = build_network_map(view, proxy.id)
    assert pm.address_v6.startswith(proxy.ipv6 + "/")
    assert pm.remote_peers[0].allowed_ips == (f"{user.ip}/32", f"{user.ipv6}/128")


def test_gateway_filter_admits_the_v6_source_for_services_dns_and_ping():
    """The packet filter the gateway builds from the proxy peer's map (as
    ``AccountRuntime._apply_filter`` does) admits the member peer's IPv6
    address for HTTPS, DNS and ICMPv6 echo, and nothing from other sources."""
    nm = build_network_map(v6_fixture(), "proxy-peer")
    net = convert(pb.NetworkMap.FromString(
        v6_map(nm, 1, source_prefixes=True).SerializeToString()))
    own = [dns_rule(net.roster), echo_rule(net.roster)]
    rules = [Rule.make(**r.rule_kwargs()) for r in (*net.inbound_rules, *own) if r is not None]
    f = PacketFilter(rules, default=DEFAULT_ACTION)
    user6 = ipaddress.ip_address(USER6).packed
    stranger6 = ipaddress.ip_address("fd12:3456:789a::77").packed
    assert f.allows(user6, 6, 443) and f.allows(user6, 6, 80)
    assert f.allows(user6, 17, 53) and f.allows(user6, 6, 53)
    assert f.allows(user6, 58) and f.allows(ipaddress.ip_address("100.64.0.10").packed, 1)
    assert not f.allows(user6, 6, 22)
    for proto, port in ((6, 443), (17, 53), (58, None)):
        assert not f.allows(stranger6, proto, port)


def test_echo_rule_empty_roster():
    assert echo_rule(()) is None


def test_encoding_without_the_capability_is_v4_only():
    """A client that does not announce PeerCapabilityIPv6Overlay gets exactly
    the IPv4 map: no address_v6, no /128, no v6 rule, no AAAA record."""
    nm = build_network_map(v6_fixture(), "user-peer")
    msg = to_proto_network_map(nm, 1, source_prefixes=True)
    assert not msg.peerConfig.address_v6
    assert [list(r.allowedIps) for r in msg.remotePeers] == [["100.64.0.99/32"]]
    assert {r.PeerIP for r in msg.FirewallRules} == {"100.64.0.99"}
    assert all(len(p) == 5 for r in msg.FirewallRules for p in r.sourcePrefixes)
    assert {r.Type for z in msg.DNSConfig.CustomZones for r in z.Records} == {1}

