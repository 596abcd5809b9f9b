"""Property tests: network maps over random rosters stay consistent with the ACL model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.management.model import Account, Group, Peer, Service
from nbgateway.management.networkmap import DIRECTION_IN, DIRECTION_OUT, build_network_map
from nbgateway.management.synthetic import AccountView

CLUSTER = "eu.proxy.netbird.io"
GROUPS = ("g1", "g2", "g3")


@st.composite
def rosters(draw):
    n_users = draw(st.integers(1, 6))
    n_proxies = draw(st.integers(0, 3))
    peers = [
        Peer(id=f"u{i}", account_id="a", key=f"ku{i}", ip=f"100.64.0.{10 + i}",
             groups=tuple(draw(st.sets(st.sampled_from(GROUPS)))))
        for i in range(n_users)
    ] + [
        Peer(id=f"p{i}", account_id="a", key=f"kp{i}", ip=f"100.64.1.{10 + i}", proxy=True,
             proxy_cluster=CLUSTER, connected=draw(st.booleans()))
        for i in range(n_proxies)
    ]
    groups = [
        Group(id=g, account_id="a", name=g,
              peers=tuple(p.id for p in peers if g in p.groups))
        for g in GROUPS
    ]
    services = [
        Service(id=f"s{i}", account_id="a", name=f"s{i}", domain=f"s{i}.{CLUSTER}",
                proxy_cluster=CLUSTER, private=draw(st.booleans()), enabled=draw(st.booleans()),
                access_groups=tuple(draw(st.lists(st.sampled_from((*GROUPS, "gone")),
                                                  max_size=3))))
        for i in range(draw(st.integers(0, 3)))
    ]
    return AccountView.of(Account(id="a", domain=""), peers, groups, services)


def _reachable(view, user, service) -> bool:
    return bool(service.enabled and service.private
                and set(service.access_groups or ()) & set(view.peers[user].groups))


@settings(max_examples=60, deadline=None)
@given(rosters())
def test_maps_are_mutually_consistent(view):
    maps = {pid: build_network_map(view, pid) for pid in view.peers}
    ip_to_id = {p.ip: p.id for p in view.peers.values()}
    for pid, nm in maps.items():
        remote_ids = {rp.id for rp in nm.remote_peers}
        assert pid not in remote_ids
        for r in nm.firewall_rules:
            other = ip_to_id[r.peer_ip]
            assert other in remote_ids
            mirror = DIRECTION_IN if r.direction == DIRECTION_OUT else DIRECTION_OUT
            assert any(
                m.peer_ip == view.peers[pid].ip and m.direction == mirror
                and m.port_range == r.port_range and m.policy_id == r.policy_id
                for m in maps[other].firewall_rules
            )
            assert r.protocol == "tcp" and r.port_range.start in (80, 443)
    for pid, peer in view.peers.items():
        if peer.proxy:
            continue
        want_remote = {
            p.id for p in view.peers.values() if p.proxy
            for s in view.services if _reachable(view, pid, s)
        }
        assert {rp.id for rp in maps[pid].remote_peers} == want_remote
        want_records = sorted(
            (f"{s.domain}.", p.ip) for s in view.services if _reachable(view, pid, s)
            for p in view.peers.values() if p.proxy and p.connected
        )
        got = sorted((r.name, r.rdata) for z in maps[pid].zones for r in z.records)
        assert got == want_records
