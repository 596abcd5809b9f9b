"""Network-map assembly and its proto encoding.

Pure tests over the §3.6 fixture, plus one that reads the AccountView from a
real SQLite/PostgreSQL store.
"""

from __future__ import annotations

import ipaddress

from nbgateway._proto import management_pb2 as pb
from nbgateway.management.model import Group, Peer, Service, Target, TargetOptions
from nbgateway.management.networkmap import (
    DIRECTION_IN,
    DIRECTION_OUT,
    FirewallRule,
    build_network_map,
    to_proto_network_map,
)
from nbgateway.management.synthetic import PortRange, load_account_view
from tests.management.test_synthetic import (
    CLUSTER,
    _other_peer,
    _proxy_peer,
    _service,
    _user_peer,
    fixture,
)


def private_service(account_id: str, groups: tuple[str, ...]) -> Service:
    return Service(
        account_id=account_id, name="myapp", domain="myapp.eu.proxy.netbird.io", private=True,
        access_groups=groups,
        targets=(Target(target_type="cluster", target_id=CLUSTER, host="backend.lan",
                        port=8080, options=TargetOptions(direct_upstream=True)),),
    )


def _rules(nm, direction):
    return sorted(
        (r.peer_ip, r.protocol, r.action, r.port_range.start, r.port_range.end)
        for r in nm.firewall_rules
        if r.direction == direction
    )


def test_PrivateService_NetworkMap_UserPeer_AndProxyPeer():
    view = fixture()
    user = build_network_map(view, "user-peer")
    assert [p.id for p in user.remote_peers] == ["proxy-peer"]
    assert user.remote_peers[0].key == "k-proxy"
    assert user.remote_peers[0].allowed_ips == ("100.64.0.99/32",)
    assert _rules(user, DIRECTION_OUT) == [
        ("100.64.0.99", "tcp", "accept", 80, 80),
        ("100.64.0.99", "tcp", "accept", 443, 443),
    ]
    assert _rules(user, DIRECTION_IN) == []
    assert {r.policy_id for r in user.firewall_rules} == {"private-access-svc-1-proxy-peer"}

    proxy = build_network_map(view, "proxy-peer")
    assert [p.id for p in proxy.remote_peers] == ["user-peer"]
    assert _rules(proxy, DIRECTION_IN) == [
        ("100.64.0.10", "tcp", "accept", 80, 80),
        ("100.64.0.10", "tcp", "accept", 443, 443),
    ]
    assert _rules(proxy, DIRECTION_OUT) == []


def test_PrivateService_NetworkMap_NonMemberGetsNeitherPeerNorRules():
    view = fixture(peers=[_user_peer(), _proxy_peer(), _other_peer()])
    other = build_network_map(view, "other-peer")
    assert other.remote_peers == ()
    assert other.firewall_rules == ()
    assert "other-peer" not in [p.id for p in build_network_map(view, "proxy-peer").remote_peers]


def test_PrivateZone_GetPeerNetworkMapFromComponents_ShipsSynthZone():
    nm = build_network_map(fixture(), "user-peer")
    synth = [z for z in nm.zones if z.domain == "eu.proxy.netbird.io."]
    assert len(synth) == 1
    assert synth[0].non_authoritative
    assert [(r.name, r.rdata, r.ttl, r.klass) for r in synth[0].records] == [
        ("myapp.eu.proxy.netbird.io.", "100.64.0.99", 5, "IN")
    ]


def test_PrivateZone_GetPeerNetworkMap_PeerOutsideGroups_OmitsSynthZone():
    view = fixture(peers=[_user_peer(), _proxy_peer(), _other_peer()])
    nm = build_network_map(view, "other-peer")
    assert not [z for z in nm.zones if z.domain == "eu.proxy.netbird.io."]


def test_NetworkMap_DisconnectedProxy_KeepsAclDropsRecord():
    nm = build_network_map(fixture(peers=[_user_peer(), _proxy_peer(connected=False)]),
                           "user-peer")
    assert [p.id for p in nm.remote_peers] == ["proxy-peer"]
    assert not [z for z in nm.zones if z.non_authoritative]


def test_NetworkMap_OwnAddressAndPeersZone():
    view = fixture(peers=[_user_peer(dns_label="laptop"), _proxy_peer(dns_label="proxy-1")])
    nm = build_network_map(view, "user-peer")
    assert nm.address == "100.64.0.10/10"
    assert nm.fqdn == "laptop.netbird.test"
    peers_zone = nm.zones[0]
    assert peers_zone.domain == "netbird.test."
    assert sorted((r.name, r.rdata) for r in peers_zone.records) == [
        ("laptop.netbird.test.", "100.64.0.10"),
        ("proxy-1.netbird.test.", "100.64.0.99"),
    ]


def test_NetworkMap_ProxyReachesPeerTarget_AndEndpointShipped():
    backend = Peer(id="nas", account_id="acct-1", name="nas", key="k-nas", ip="100.64.0.20")
    svc = _service(targets=(Target(path="/", port=8080, protocol="http", target_id="nas",
                                   target_type="peer"),))
    proxy = _proxy_peer(endpoint="127.0.0.1:51820")
    view = fixture(peers=[_user_peer(), proxy, backend], services=[svc])
    pm = build_network_map(view, "proxy-peer")
    assert sorted(p.id for p in pm.remote_peers) == ["nas", "user-peer"]
    assert FirewallRule("proxy-access-svc-1-proxy-peer-/", "100.64.0.20", DIRECTION_OUT,
                        "accept", "tcp", "", PortRange(8080, 8080)) in pm.firewall_rules
    nas = build_network_map(view, "nas")
    assert [(p.id, p.endpoint) for p in nas.remote_peers] == [("proxy-peer", "127.0.0.1:51820")]
    assert _rules(nas, DIRECTION_IN) == [("100.64.0.99", "tcp", "accept", 8080, 8080)]


def test_NetworkMap_ToProto():
    nm = build_network_map(fixture(), "user-peer")
    msg = to_proto_network_map(nm, 42, source_prefixes=True)
    # round-trips through the wire format
    msg = pb.NetworkMap.FromString(msg.SerializeToString())
    assert msg.Serial == 42
    assert msg.peerConfig.address == "100.64.0.10/10"
    assert [(r.wgPubKey, list(r.allowedIps)) for r in msg.remotePeers] == [
        ("k-proxy", ["100.64.0.99/32"])
    ]
    assert not msg.remotePeersIsEmpty
    zone = next(z for z in msg.DNSConfig.CustomZones if z.Domain == "eu.proxy.netbird.io.")
    assert zone.NonAuthoritative and zone.SearchDomainDisabled
    assert [(r.Name, r.Type, r.Class, r.TTL, r.RData) for r in zone.Records] == [
        ("myapp.eu.proxy.netbird.io.", 1, "IN", 5, "100.64.0.99")
    ]
    rules = sorted(msg.FirewallRules, key=lambda r: r.PortInfo.range.start)
    assert [(r.PeerIP, r.Direction, r.Action, r.Protocol, r.PortInfo.range.start,
             r.PortInfo.range.end) for r in rules] == [
        ("100.64.0.99", pb.OUT, pb.ACCEPT, pb.TCP, 80, 80),
        ("100.64.0.99", pb.OUT, pb.ACCEPT, pb.TCP, 443, 443),
    ]
    assert rules[0].PolicyID == b"private-access-svc-1-proxy-peer"
    assert list(rules[0].sourcePrefixes) == [
        ipaddress.ip_address("100.64.0.99").packed + bytes([32])
    ]
    assert not msg.firewallRulesIsEmpty


def test_NetworkMap_ToProto_EmptyMap():
    view = fixture(peers=[_user_peer(), _proxy_peer(), _other_peer()])
    msg = to_proto_network_map(build_network_map(view, "other-peer"), 1)
    assert msg.remotePeersIsEmpty and msg.firewallRulesIsEmpty
    assert list(msg.remotePeers) == [] and list(msg.FirewallRules) == []


def test_NetworkMap_FromStore(store, account):
    """The same F built through the real store (SQLite and PostgreSQL)."""
    user = store.peers.create(Peer(account_id=account.id, name="laptop", key="k-user",
                                  ip="100.64.0.10"))
    proxy = store.peers.create(Peer(account_id=account.id, name="proxy-1", key="k-proxy",
                                   ip="100.64.0.99", proxy=True, proxy_cluster=CLUSTER,
                                   connected=True, ephemeral=True))
    store.groups.create(Group(id="grp-admins", account_id=account.id, name="admins",
                             peers=(user.id,)))
    svc = store.services.create(private_service(account.id, ("grp-admins",)))
    view = load_account_view(store, account.id)
    nm = build_network_map(view, user.id)
    assert [p.id for p in nm.remote_peers] == [proxy.id]
    assert {r.policy_id for r in nm.firewall_rules} == {f"private-access-{svc.id}-{proxy.id}"}
    synth = [z for z in nm.zones if z.non_authoritative]
    assert [(z.domain, [r.rdata for r in z.records]) for z in synth] == [
        ("eu.proxy.netbird.io.", ["100.64.0.99"])
    ]


def test_inspection_json(store, account):
    """The REST inspection helpers return JSON-ready dicts; unknown peers are NotFound."""
    import json

    import pytest

    from nbgateway.management.errors import NotFound
    from nbgateway.management.networkmap import inspect_peer_network_map
    from nbgateway.management.synthetic import private_service_inspection
    user = store.peers.create(Peer(account_id=account.id, name="laptop", key="k-user"))
    proxy = store.peers.create(Peer(account_id=account.id, name="proxy-1", key="k-proxy",
                                   proxy=True, proxy_cluster=CLUSTER, connected=True,
                                   endpoint="127.0.0.1:51820"))
    store.groups.create(Group(id="grp-admins", account_id=account.id, name="admins",
                             peers=(user.id,)))
    svc = store.services.create(private_service(account.id, ("grp-admins",)))
    got = inspect_peer_network_map(store, account.id, user.id)
    json.dumps(got)
    assert [(p["id"], p["endpoint"]) for p in got["remote_peers"]] == [
        (proxy.id, "127.0.0.1:51820")
    ]
    assert {(r["direction"], r["port_range"]["start"]) for r in got["firewall_rules"]} == {
        ("out", 80), ("out", 443)
    }
    insp = private_service_inspection(store, account.id)
    json.dumps(insp)
    assert [p["id"] for p in insp["policies"]] == [f"private-access-{svc.id}-{proxy.id}"]
    assert insp["policies"][0]["rules"][0]["port_ranges"] == [
        {"start": 80, "end": 80}, {"start": 443, "end": 443}
    ]
    assert [z["domain"] for z in insp["zones"][user.id]] == ["eu.proxy.netbird.io."]
    # the proxy peer gets its cluster's records (it answers DNS for the service)
    assert [z["domain"] for z in insp["zones"][proxy.id]] == ["eu.proxy.netbird.io."]
    assert list(private_service_inspection(store, account.id, user.id)["zones"]) == [user.id]
    with pytest.raises(NotFound):
        inspect_peer_network_map(store, account.id, "nope")
    with pytest.raises(NotFound):
        private_service_inspection(store, account.id, "nope")


def test_remote_peer_endpoint_extension_field_on_the_wire():
    """Field 50 (nbgateway extension) carries a remote peer's endpoint; the
    gateway's conversion reads it back."""
    from nbgateway._proto import management_pb2 as pb
    from nbgateway.mgmt.netmap import convert

    field = pb.RemotePeerConfig.DESCRIPTOR.fields_by_name["endpoint"]
    assert field.number == 50
    nm = pb.NetworkMap(Serial=3, peerConfig=pb.PeerConfig(address="100.64.0.5/10"))
    key = "A" * 43 + "="
    nm.remotePeers.add(wgPubKey=key, allowedIps=["100.64.0.9/32"], endpoint="198.18.0.1:51820")
    wire = nm.SerializeToString()
    assert convert(pb.NetworkMap.FromString(wire)).roster[0].endpoint == "198.18.0.1:51820"
