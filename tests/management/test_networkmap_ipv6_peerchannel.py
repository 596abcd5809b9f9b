"""IPv6 overlay over the peer channel (issue 11 item 7): a client that announces
``PeerCapabilityIPv6Overlay`` (the gateway does) gets its IPv6 tunnel address
and its remote peers' ``/128`` AllowedIPs and v6 firewall sources in Login and
Sync; one that does not gets the IPv4-only map.  Real gRPC server and store
(the fixtures of ``test_peerchannel``)."""

from __future__ import annotations

import ipaddress

from nbgateway._proto import management_pb2 as pb
from nbgateway.mgmt.netmap import convert
from tests.management.test_peerchannel import (  # noqa: F401  (pytest fixtures)
    SyncStream,
    scenario,
    server,
    server_key,
    store,
    stub,
)


def test_peer_channel_sync_with_the_ipv6_capability(store, stub, scenario):  # noqa: F811
    s = SyncStream(scenario["p"], capabilities=[pb.PeerCapabilitySourcePrefixes,
                                                pb.PeerCapabilityIPv6Overlay])
    try:
        m = s.next()
    finally:
        s.cancel()
    user, proxy = scenario["user"], scenario["proxy"]
    assert user.ipv6 and proxy.ipv6  # the store allocated both from the account's ULA /64
    net = convert(m.NetworkMap)
    assert net.address_v6 is not None and str(net.address_v6.ip) == proxy.ipv6
    assert net.addresses == ("100.64.0.99", proxy.ipv6)
    (peer,) = net.roster
    assert str(ipaddress.ip_network(f"{user.ipv6}/128")) in map(str, peer.allowed_ips)
    assert {str(src) for r in net.inbound_rules for src in r.sources} == {
        "100.64.0.10/32", f"{user.ipv6}/128"}


def test_peer_channel_sync_and_login_without_the_capability(store, stub, scenario):  # noqa: F811
    s = SyncStream(scenario["p"], capabilities=[pb.PeerCapabilitySourcePrefixes])
    try:
        m = s.next()
    finally:
        s.cancel()
    net = convert(m.NetworkMap)
    assert net.address_v6 is None
    assert [tuple(map(str, p.allowed_ips)) for p in net.roster] == [("100.64.0.10/32",)]
    login = scenario["p"].login()
    assert login.peerConfig.address == "100.64.0.99/10" and not login.peerConfig.address_v6
    meta = pb.PeerSystemMeta(hostname="t", goOS="linux",
                             capabilities=[pb.PeerCapabilityIPv6Overlay])
    login6 = scenario["p"].open(
        stub.Login(scenario["p"].seal(pb.LoginRequest(meta=meta)), timeout=10),
        pb.LoginResponse())
    assert login6.peerConfig.address_v6 == (
        ipaddress.ip_address(scenario["proxy"].ipv6).packed + bytes([64]))
