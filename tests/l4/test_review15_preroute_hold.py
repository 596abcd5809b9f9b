"""review15 F4: on a public port shared by two accounts' TLS routes,
connections still in the PROXY/peek phase count against --max-relays
(PortRouter.at_limit counts every connection), while the per-account half
only applies at dial time.  Silent connections from one address (each lives
HEADER_TIMEOUT, 5 s) made the router refuse B's new connections outright;
one source address now holds at most ``source_cap()`` connections before
their route."""

from __future__ import annotations

from twisted.internet.address import IPv4Address

from tests.l4.test_router import accept, make_router, target
from tests.l4.test_sni import client_hello


def test_silent_connections_do_not_take_another_tenants_relays():
    router, _clock, _ep, dialed = make_router(max_relays=8)
    router.set_route(target(mode="tls", sid="a", domain="a.example", account="A"))
    router.set_route(target(mode="tls", sid="b", domain="b.example", account="B"))
    held = 0
    for i in range(8):  # one source, sending nothing: refused past its share
        if router.buildProtocol(IPv4Address("TCP", "203.0.113.9", 1000 + i)) is not None:
            held += 1
    assert held == router.source_cap() < 8
    proto = router.buildProtocol(None)
    assert proto is not None, "B's client refused by A's silent connections"
    proto_b, _ = accept(router, peer=("198.51.100.1", 1))
    proto_b.dataReceived(client_hello("b.example"))
    assert [t.service_id for t in dialed] == ["b"]


def test_a_source_s_share_comes_back_when_its_connections_route_or_close():
    router, _clock, _ep, dialed = make_router(max_relays=8)
    router.set_route(target(mode="tls", sid="a", domain="a.example", account="A"))
    cap = router.source_cap()
    protos = [accept(router, peer=("203.0.113.9", 2000 + i))[0] for i in range(cap)]
    assert router.buildProtocol(IPv4Address("TCP", "203.0.113.9", 3000)) is None
    assert router.stats.source_limit_hits == 1
    protos[0].dataReceived(client_hello("a.example"))  # routed: no longer before its route
    protos[1].connectionLost(None)  # gone
    assert router.pending_sources.get("203.0.113.9", 0) == cap - 2
    more = [accept(router, peer=("203.0.113.9", 4000 + i))[0] for i in range(2)]
    assert all(p is not None for p in more)
    for p in protos[2:] + more:
        p.connectionLost(None)
    assert router.pending_sources == {}
    assert [t.service_id for t in dialed] == ["a"]


def test_behind_a_proxy_protocol_balancer_the_source_is_not_capped():
    """Every connection comes from the balancer's address there."""
    router, _clock, _ep, _dialed = make_router(max_relays=8, proxy_protocol=True)
    router.set_route(target(mode="tls", sid="a", domain="a.example", account="A"))
    protos = [accept(router, peer=("10.0.0.2", 5000 + i))[0] for i in range(8)]
    assert all(p is not None for p in protos) and router.pending_sources == {}
