"""Synthetic DNS zones and ACL policies.

Pure unit tests over an in-memory AccountView built from fixture F:
account ``acct-1`` (100.64.0.0/10), user peer U ``100.64.0.10`` in ``grp-admins``,
proxy peer P ``100.64.0.99`` (embedded, cluster ``eu.proxy.netbird.io``,
connected), service ``svc-1`` "myapp" at ``myapp.eu.proxy.netbird.io``, private,
access groups ``["grp-admins"]``.
"""

from __future__ import annotations

import dataclasses

from nbgateway.management.model import Account, CustomDomain, Group, Peer, Service, Target
from nbgateway.management.synthetic import (
    AccountView,
    CustomZone,
    PortRange,
    Resource,
    SimpleRecord,
    inject_private_service_policies,
    inject_proxy_policies,
    private_service_zone_apex,
    proxy_peers_by_cluster,
    synthesize_private_service_zones,
)

CLUSTER = "eu.proxy.netbird.io"


def _user_peer(**kw) -> Peer:
    base = dict(id="user-peer", account_id="acct-1", name="laptop", key="k-user",
                ip="100.64.0.10", groups=("grp-admins",))
    return Peer(**{**base, **kw})


def _proxy_peer(**kw) -> Peer:
    base = dict(id="proxy-peer", account_id="acct-1", name="proxy-1", key="k-proxy",
                ip="100.64.0.99", proxy=True, proxy_cluster=CLUSTER, connected=True,
                ephemeral=True)
    return Peer(**{**base, **kw})


def _service(**kw) -> Service:
    base = dict(id="svc-1", account_id="acct-1", name="myapp",
                domain="myapp.eu.proxy.netbird.io", proxy_cluster=CLUSTER, enabled=True,
                private=True, access_groups=("grp-admins",),
                targets=(Target(host="10.0.0.5", port=8080, target_id="backend",
                                target_type="host"),))
    return Service(**{**base, **kw})


def fixture(*, peers=None, services=None, groups=None, domains=()) -> AccountView:
    if peers is None:
        peers = [_user_peer(), _proxy_peer()]
    if services is None:
        services = [_service()]
    if groups is None:
        groups = [
            Group(id="grp-admins", account_id="acct-1", name="admins", peers=("user-peer",)),
            Group(id="grp-other", account_id="acct-1", name="other", peers=("other-peer",)),
        ]
    return AccountView.of(
        Account(id="acct-1", domain="netbird.test", network_v4="100.64.0.0/10"),
        peers, groups, services, domains,
    )


def _other_peer() -> Peer:
    return Peer(id="other-peer", account_id="acct-1", name="other", key="k-other",
                ip="100.64.0.11", groups=("grp-other",))


def _record(name: str, ip: str) -> SimpleRecord:
    return SimpleRecord(name=name, type=1, klass="IN", ttl=5, rdata=ip)


# --- DNS ---------------------------------------------------------------------------


def test_SynthesizePrivateServiceZones_PeerInGroup_GetsRecord():
    zones = synthesize_private_service_zones(fixture(), "user-peer")
    assert zones == [
        CustomZone(
            domain="eu.proxy.netbird.io.",
            records=(_record("myapp.eu.proxy.netbird.io.", "100.64.0.99"),),
            search_domain_disabled=True,
            non_authoritative=True,
        )
    ]


def test_SynthesizePrivateServiceZones_PeerNotInGroup_NoRecord():
    view = fixture(peers=[_user_peer(), _proxy_peer(), _other_peer()])
    assert synthesize_private_service_zones(view, "other-peer") == []
    # the proxy peer is in no access group, but it serves the service (its
    # cluster): it gets the records to answer with (nbgateway extension)
    assert [z.records for z in synthesize_private_service_zones(view, "proxy-peer")] == [
        (_record("myapp.eu.proxy.netbird.io.", "100.64.0.99"),)]


def test_SynthesizePrivateServiceZones_UnknownPeer_NoRecord():
    assert synthesize_private_service_zones(fixture(), "nope") == []


def test_SynthesizePrivateServiceZones_NotPrivate_NoRecord():
    view = fixture(services=[_service(private=False)])
    assert synthesize_private_service_zones(view, "user-peer") == []


def test_SynthesizePrivateServiceZones_NoAccessGroups_NoRecord():
    for groups in ((), None):
        view = fixture(services=[_service(access_groups=groups)])
        assert synthesize_private_service_zones(view, "user-peer") == []


def test_SynthesizePrivateServiceZones_NoProxyPeers_NoRecord():
    view = fixture(peers=[_user_peer()])
    assert synthesize_private_service_zones(view, "user-peer") == []
    # proxy peers of another cluster do not count
    view = fixture(peers=[_user_peer(), _proxy_peer(proxy_cluster="us.proxy.netbird.io")])
    assert synthesize_private_service_zones(view, "user-peer") == []


def test_SynthesizePrivateServiceZones_DisabledService_NoRecord():
    view = fixture(services=[_service(enabled=False)])
    assert synthesize_private_service_zones(view, "user-peer") == []


def test_SynthesizePrivateServiceZones_DisconnectedProxyPeer_NoRecord():
    view = fixture(peers=[_user_peer(), _proxy_peer(connected=False)])
    assert synthesize_private_service_zones(view, "user-peer") == []  # empty zone dropped


def test_SynthesizePrivateServiceZones_PartiallyDisconnectedProxyPeers_OnlyConnectedSurface():
    second = _proxy_peer(id="proxy-peer-2", key="k-p2", ip="100.64.0.100", connected=False)
    view = fixture(peers=[_user_peer(), _proxy_peer(), second])
    (zone,) = synthesize_private_service_zones(view, "user-peer")
    assert zone.records == (_record("myapp.eu.proxy.netbird.io.", "100.64.0.99"),)


def test_SynthesizePrivateServiceZones_MultipleProxyPeers_RoundRobin():
    second = _proxy_peer(id="proxy-peer-2", key="k-p2", ip="100.64.0.100")
    view = fixture(peers=[_user_peer(), _proxy_peer(), second])
    (zone,) = synthesize_private_service_zones(view, "user-peer")
    assert sorted(r.rdata for r in zone.records) == ["100.64.0.100", "100.64.0.99"]
    assert {r.name for r in zone.records} == {"myapp.eu.proxy.netbird.io."}
    assert all(r.ttl == 5 and r.type == 1 and r.klass == "IN" for r in zone.records)


def test_SynthesizePrivateServiceZones_ProxyPeerWithIPv6_NoAAAA():
    view = fixture(peers=[_user_peer(), _proxy_peer(ipv6="fd00::99")])
    (zone,) = synthesize_private_service_zones(view, "user-peer")
    assert [r.type for r in zone.records] == [1]


def test_SynthesizePrivateServiceZones_TwoServicesSameCluster_OneZone():
    s2 = _service(id="svc-2", name="wiki", domain="wiki.eu.proxy.netbird.io")
    view = fixture(services=[_service(), s2])
    (zone,) = synthesize_private_service_zones(view, "user-peer")
    assert zone.domain == "eu.proxy.netbird.io."
    assert sorted(r.name for r in zone.records) == [
        "myapp.eu.proxy.netbird.io.",
        "wiki.eu.proxy.netbird.io.",
    ]


def test_SynthesizePrivateServiceZones_CustomDomain_ZoneApexIsRegisteredDomain():
    svc = _service(domain="app.example.com")
    dom = CustomDomain(id="d1", account_id="acct-1", domain="example.com", target_cluster=CLUSTER)
    view = fixture(services=[svc], domains=[dom])
    (zone,) = synthesize_private_service_zones(view, "user-peer")
    assert zone.domain == "example.com."
    assert zone.records == (_record("app.example.com.", "100.64.0.99"),)


def test_SynthesizePrivateServiceZones_CustomDomain_LongestRegisteredDomainWins():
    svc = _service(domain="app.eu.example.com")
    doms = [
        CustomDomain(id="d1", domain="example.com", target_cluster=CLUSTER),
        CustomDomain(id="d2", domain="eu.example.com", target_cluster=CLUSTER),
    ]
    assert private_service_zone_apex(svc, doms) == "eu.example.com"


def test_SynthesizePrivateServiceZones_CustomAndFreeDomain_SeparateZones():
    custom = _service(id="svc-2", name="app", domain="app.example.com")
    dom = CustomDomain(id="d1", domain="example.com", target_cluster=CLUSTER)
    view = fixture(services=[_service(), custom], domains=[dom])
    zones = synthesize_private_service_zones(view, "user-peer")
    assert [z.domain for z in zones] == ["eu.proxy.netbird.io.", "example.com."]
    assert [len(z.records) for z in zones] == [1, 1]


def test_SynthesizePrivateServiceZones_TwoServicesSameCustomDomain_OneZone():
    a = _service(id="svc-a", name="a", domain="a.example.com")
    b = _service(id="svc-b", name="b", domain="b.example.com")
    dom = CustomDomain(id="d1", domain="example.com", target_cluster=CLUSTER)
    (zone,) = synthesize_private_service_zones(fixture(services=[a, b], domains=[dom]),
                                               "user-peer")
    assert zone.domain == "example.com."
    assert sorted(r.name for r in zone.records) == ["a.example.com.", "b.example.com."]


def test_SynthesizePrivateServiceZones_CustomDomainNotRegistered_NoZone():
    view = fixture(services=[_service(domain="app.example.com")])
    assert synthesize_private_service_zones(view, "user-peer") == []


def test_SynthesizePrivateServiceZones_CustomDomainClusterMismatch_NoZone():
    dom = CustomDomain(id="d1", domain="example.com", target_cluster="us.proxy.netbird.io")
    view = fixture(services=[_service(domain="app.example.com")], domains=[dom])
    assert synthesize_private_service_zones(view, "user-peer") == []


def test_SynthesizePrivateServiceZones_MixedClusterCustomAndPublic():
    us = "us.proxy.netbird.io"
    us_proxy = _proxy_peer(id="proxy-us", key="k-us", ip="100.64.0.120", proxy_cluster=us)
    svc_eu = _service()
    svc_us_custom = _service(id="svc-3", name="shop", domain="shop.example.org",
                             proxy_cluster=us)
    svc_public = _service(id="svc-4", name="pub", domain="pub.eu.proxy.netbird.io",
                          private=False)
    dom = CustomDomain(id="d1", domain="example.org", target_cluster=us)
    view = fixture(peers=[_user_peer(), _proxy_peer(), us_proxy],
                   services=[svc_eu, svc_us_custom, svc_public], domains=[dom])
    zones = {z.domain: z for z in synthesize_private_service_zones(view, "user-peer")}
    assert set(zones) == {"eu.proxy.netbird.io.", "example.org."}
    assert zones["eu.proxy.netbird.io."].records == (
        _record("myapp.eu.proxy.netbird.io.", "100.64.0.99"),
    )
    assert zones["example.org."].records == (_record("shop.example.org.", "100.64.0.120"),)


def test_SynthesizePrivateServiceZones_GroupMembershipFromGroupRows():
    # membership recorded only on the group row (not on peer.groups) still counts
    peer = _user_peer(groups=())
    view = fixture(peers=[peer, _proxy_peer()])
    assert len(synthesize_private_service_zones(view, "user-peer")) == 1


# --- ACL ---------------------------------------------------------------------------------


def test_InjectPrivateServicePolicies_ProxyPeerGetsInboundRule():
    view = fixture()
    policies = inject_private_service_policies(
        view, view.services[0], proxy_peers_by_cluster(view.peers.values())[CLUSTER]
    )
    assert len(policies) == 1
    (p,) = policies
    assert p.id == "private-access-svc-1-proxy-peer"
    assert p.name == "Private Access to myapp"
    assert p.enabled
    (rule,) = p.rules
    assert rule.id == rule.policy_id == "private-access-svc-1-proxy-peer"
    assert rule.name == "Allow access groups to reach myapp"
    assert rule.enabled
    assert rule.sources == ("grp-admins",)
    assert rule.destination_resource == Resource(id="proxy-peer", type="peer")
    assert rule.bidirectional is False
    assert rule.protocol == "tcp"
    assert rule.action == "accept"
    assert rule.port_ranges == (PortRange(80, 80), PortRange(443, 443))


def test_InjectPrivateServicePolicies_NotPrivate_NoPolicy():
    view = fixture(services=[_service(private=False)])
    assert not [p for p in inject_proxy_policies(view) if p.id.startswith("private-access-")]


def test_InjectPrivateServicePolicies_EmptyAccessGroups_NoPolicy():
    for groups in ((), None):
        view = fixture(services=[_service(access_groups=groups)])
        assert not [p for p in inject_proxy_policies(view) if p.id.startswith("private-access-")]


def test_InjectPrivateServicePolicies_NoProxyPeers_NoPolicy():
    view = fixture(peers=[_user_peer()])
    assert inject_proxy_policies(view) == []
    assert inject_private_service_policies(view, view.services[0], []) == []


def test_InjectPrivateServicePolicies_TwoProxyPeers_TwoPolicies_ConnectionStateIgnored():
    second = _proxy_peer(id="proxy-peer-2", key="k-p2", ip="100.64.0.100", connected=False)
    view = fixture(peers=[_user_peer(), _proxy_peer(connected=False), second])
    ids = sorted(p.id for p in inject_proxy_policies(view) if p.id.startswith("private-"))
    assert ids == ["private-access-svc-1-proxy-peer", "private-access-svc-1-proxy-peer-2"]


def test_InjectPrivateServicePolicies_DanglingGroupsDropped():
    view = fixture(services=[_service(access_groups=("grp-admins", "deleted-grp"))])
    (p,) = [p for p in inject_proxy_policies(view) if p.id.startswith("private-access-")]
    assert p.rules[0].sources == ("grp-admins",)
    view = fixture(services=[_service(access_groups=("deleted-grp",))])
    assert not [p for p in inject_proxy_policies(view) if p.id.startswith("private-access-")]


def test_InjectPrivateServicePolicies_DisabledService_NoPolicy():
    view = fixture(services=[_service(enabled=False)])
    assert inject_proxy_policies(view) == []


def test_InjectProxyPolicies_PeerTarget_ProxyToBackendPolicy():
    backend = Peer(id="backend-peer", account_id="acct-1", name="nas", key="k-nas",
                   ip="100.64.0.20")
    svc = _service(private=False, targets=(
        Target(path="/", port=0, protocol="https", target_id="backend-peer",
               target_type="peer"),
    ))
    view = fixture(peers=[_user_peer(), _proxy_peer(), backend], services=[svc])
    (p,) = inject_proxy_policies(view)
    assert p.id == "proxy-access-svc-1-proxy-peer-/"
    (rule,) = p.rules
    assert rule.source_resource == Resource("proxy-peer", "peer")
    assert rule.destination_resource == Resource("backend-peer", "peer")
    assert rule.port_ranges == (PortRange(443, 443),)
    assert rule.protocol == "tcp"


def test_InjectProxyPolicies_ClusterTarget_Skipped():
    # [REC] §3.4: no inert proxy-access policy for cluster targets
    svc = _service(targets=(Target(port=443, protocol="https", target_id=CLUSTER,
                                   target_type="cluster"),))
    ids = [p.id for p in inject_proxy_policies(fixture(services=[svc]))]
    assert ids == ["private-access-svc-1-proxy-peer"]


def test_InjectProxyPolicies_UnresolvablePortSkipped_DisabledTargetSkipped():
    svc = _service(private=False, targets=(
        Target(port=0, protocol="tcp", target_id="x", target_type="host"),
        Target(port=80, protocol="http", target_id="y", target_type="host", enabled=False),
    ))
    assert inject_proxy_policies(fixture(services=[svc])) == []


def test_synthesis_does_not_mutate_view():
    view = fixture()
    before = dataclasses.replace(view)
    inject_proxy_policies(view)
    synthesize_private_service_zones(view, "user-peer")
    assert view == before


def test_SynthesizePrivateServiceZones_GatewayPair_BothAddressesForEveryone():
    """Two gateways of one cluster: the member peer and each gateway get one
    record per connected gateway; a disconnected gateway or one of another
    cluster is not named."""
    second = _proxy_peer(id="proxy-peer-2", key="k-proxy-2", ip="100.64.0.98")
    other_cluster = _proxy_peer(id="proxy-peer-3", key="k-proxy-3", ip="100.64.0.97",
                                proxy_cluster="us.proxy.netbird.io")
    view = fixture(peers=[_user_peer(), _proxy_peer(), second, other_cluster, _other_peer()])
    both = (_record("myapp.eu.proxy.netbird.io.", "100.64.0.99"),
            _record("myapp.eu.proxy.netbird.io.", "100.64.0.98"))
    for peer_id in ("user-peer", "proxy-peer", "proxy-peer-2"):
        zones = synthesize_private_service_zones(view, peer_id)
        assert [(z.domain, set(z.records)) for z in zones] == [
            ("eu.proxy.netbird.io.", set(both))], peer_id
    assert synthesize_private_service_zones(view, "proxy-peer-3") == []
    assert synthesize_private_service_zones(view, "other-peer") == []
    view = fixture(peers=[_user_peer(), _proxy_peer(), dataclasses.replace(second,
                                                                          connected=False)])
    assert [z.records for z in synthesize_private_service_zones(view, "proxy-peer-2")] == [
        (_record("myapp.eu.proxy.netbird.io.", "100.64.0.99"),)]
