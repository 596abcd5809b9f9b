"""Port router and relay with fake transports and task.Clock."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from nbgateway.l4.proxyproto import ProxyHeaderReader, encode_v2
from nbgateway.l4.router import HEADER_TIMEOUT, PortRouter
from nbgateway.l4.stats import L4Stats
from nbgateway.l4.target import dial_timeout, idle_timeout, target_from_mapping
from tests.l4.fakes import Endpoint, Transport, mapping
from tests.l4.test_sni import client_hello


def make_router(**kw):
    clock = Clock()
    endpoint = kw.pop("endpoint", None) or Endpoint()
    dialed = []

    def dial(target):
        dialed.append(target)
        return endpoint

    router = PortRouter(7000, clock=clock, dial=dial, stats=L4Stats(), **kw)
    return router, clock, endpoint, dialed


def accept(router, peer=("192.0.2.10", 40000)):
    proto = router.buildProtocol(IPv4Address("TCP", *peer))
    t = Transport(peer=peer)
    proto.makeConnection(t)
    return proto, t


def target(**kw):
    return target_from_mapping(mapping(**kw))


def test_timeouts_clamp():
    assert dial_timeout(0, 0) == 30
    assert dial_timeout(0, 10) == 10
    assert dial_timeout(50, 10) == 10
    assert dial_timeout(5, 10) == 5
    assert idle_timeout(0, 60, "tcp") == 300
    assert idle_timeout(0, 10, "udp") == 30
    assert idle_timeout(600, 60, "tcp") == 60


def test_fallback_relay_replays_and_half_closes():
    router, _clock, ep, dialed = make_router()
    router.set_route(target())
    proto, client = accept(router)
    assert dialed and client.producerState == "paused"  # no peek on a fallback-only port
    proto.dataReceived(b"early")
    up_proto, up = ep.complete()
    assert up.value() == b"early"
    assert client.producerState == "producing"
    assert up.producer is client and client.producer is up  # backpressure both ways
    proto.dataReceived(b"more")
    up_proto.dataReceived(b"reply")
    assert up.value() == b"earlymore" and client.value() == b"reply"
    proto.readConnectionLost()  # client shut down writing
    assert up.write_closed and not client.disconnecting
    up_proto.dataReceived(b"after-eof")  # the client still reads
    assert client.value().endswith(b"after-eof")
    up_proto.readConnectionLost()
    assert client.write_closed


def test_sni_routes_and_fallback():
    router, _clock, ep, dialed = make_router()
    router.set_route(target(mode="tls", domain="A.Example", sid="a", target="10.0.0.1:443"))
    router.set_route(target(mode="tls", domain="b.example", sid="b", target="10.0.0.2:443"))
    hello = client_hello("a.EXAMPLE")
    proto, _client = accept(router)
    proto.dataReceived(hello[:10])
    assert not dialed
    proto.dataReceived(hello[10:])
    assert dialed[-1].service_id == "a"
    _, up = ep.complete()
    assert up.value() == hello  # peeked bytes replayed
    proto2, client2 = accept(router)
    proto2.dataReceived(client_hello("c.example"))
    assert client2.aborted and router.stats.no_route == 1  # no fallback: closed
    router.set_route(target(sid="fb"))
    proto3, _ = accept(router)
    proto3.dataReceived(b"\x16\x03\x01\x00\x00")  # TLS without SNI
    assert dialed[-1].service_id == "fb"


def test_slow_sni_sender_cut_at_deadline():
    router, clock, _ep, dialed = make_router()
    router.set_route(target(mode="tls", domain="a.example"))
    proto, client = accept(router)
    proto.dataReceived(b"\x16\x03")
    clock.advance(HEADER_TIMEOUT - 0.1)
    assert not client.aborted
    clock.advance(0.2)
    assert client.aborted and not dialed and router.stats.header_timeouts == 1


def test_oversize_record_is_tls_without_sni():
    router, _clock, _ep, dialed = make_router()
    router.set_route(target(mode="tls", domain="a.example"))
    proto, client = accept(router)
    proto.dataReceived(b"\x16\x03\x01\x40\x01" + b"x" * 100)  # 16 KiB + 1
    assert client.aborted and not dialed


def test_relay_limit():
    router, _clock, _ep, _dialed = make_router(max_relays=2)
    router.set_route(target())
    accept(router)
    accept(router)
    assert router.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1)) is None
    assert router.stats.limit_hits == 1


def test_idle_watchdog_and_route_removal():
    router, clock, ep, _dialed = make_router()
    router.set_route(target())
    proto, client = accept(router)
    ep.complete()
    clock.advance(299)
    proto.dataReceived(b"x")
    clock.advance(299)
    assert not client.aborted
    clock.advance(2)
    assert client.aborted and proto.relay.close_reason == "idle_timeout"
    proto2, client2 = accept(router)
    _, up2 = ep.complete()
    assert router.remove_service("svc1") >= 1
    assert client2.aborted and up2.aborted and proto2.relay.close_reason == "route_removed"


def test_proxy_v2_to_backend():
    router, _clock, ep, _dialed = make_router()
    router.set_route(target(proxy_protocol=True))
    proto, _client = accept(router, peer=("192.0.2.77", 4444))
    proto.dataReceived(b"hi")
    _, up = ep.complete()
    hdr, rest = ProxyHeaderReader().feed(up.value())
    assert hdr.source == ("192.0.2.77", 4444) and hdr.destination == ("198.18.0.1", 7000)
    assert rest == b"hi"


def test_inbound_proxy_trusted_untrusted():
    trusted = {"10.9.9.9"}
    router, _clock, ep, _dialed = make_router(proxy_protocol=True,
                                            trusted=lambda ip: ip in trusted)
    router.set_route(target())
    seen = []
    router.on_relay_end = lambda conn: seen.append(conn.source)
    # trusted source: header honoured
    proto, _ = accept(router, peer=("10.9.9.9", 1))
    proto.dataReceived(encode_v2(("203.0.113.5", 5555), ("198.18.0.1", 7000)) + b"data")
    _, up = ep.complete()
    assert proto.source == ("203.0.113.5", 5555) and up.value() == b"data"
    # untrusted source: header stripped, its address ignored
    proto2, _ = accept(router, peer=("192.0.2.66", 2))
    proto2.dataReceived(b"PROXY TCP4 203.0.113.9 198.18.0.1 1 2\r\nxyz")
    _, up2 = ep.complete()
    assert proto2.source == ("192.0.2.66", 2) and up2.value() == b"xyz"
    # trusted source without a header: refused
    proto3, c3 = accept(router, peer=("10.9.9.9", 3))
    proto3.dataReceived(b"GET / HTTP/1.1\r\n")
    assert c3.aborted and router.stats.bad_input == 1
    # a lying header: refused
    proto4, c4 = accept(router, peer=("10.9.9.9", 4))
    proto4.dataReceived(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04abcd")
    assert c4.aborted and router.stats.bad_input == 2


def test_dial_failure_counts_and_closes():
    router, _clock, _ep, _dialed = make_router(endpoint=Endpoint(error=OSError("refused")))
    router.set_route(target())
    ended = []
    router.on_relay_end = ended.append
    _proto, client = accept(router)
    assert client.aborted and router.stats.dial_failures == 1
    assert ended and ended[0].relay.close_reason == "dial_failed"


def test_private_gate():
    verdicts = {"100.64.0.2": (True, "", "user1", ("devs",)),
                "100.64.0.3": (False, "not_in_group", "", ())}
    router, _clock, _ep, dialed = make_router(
        gate=lambda t, ip: succeed(verdicts[ip]), account_id="acct")
    router.set_route(target(private=True))
    proto, _client = accept(router, peer=("100.64.0.2", 1))
    assert dialed and proto.user_id == "user1"
    _proto2, client2 = accept(router, peer=("100.64.0.3", 1))
    assert client2.aborted and len(dialed) == 1 and router.stats.denied == 1


def test_one_account_holds_at_most_half_of_a_shared_routers_relays():
    """Two accounts' TLS routes on one port: account A's clients cannot take
    every relay; B still gets one, and A gets its slot back when a relay ends.
    Before, A's 4 connections took all 4 relays and B's was refused."""
    router, _clock, _ep, dialed = make_router(max_relays=4)
    router.set_route(target(mode="tls", sid="a", domain="a.example", account="A"))
    router.set_route(target(mode="tls", sid="b", domain="b.example", account="B"))
    conns = []
    for i in range(3):
        proto, client = accept(router, peer=("192.0.2.10", 40000 + i))
        proto.dataReceived(client_hello("a.example"))
        conns.append((proto, client))
    assert [t.service_id for t in dialed] == ["a", "a"]
    assert conns[2][0].close_reason == "relay_limit" and conns[2][1].aborted
    assert router.stats.account_limit_hits == 1 and router.account_relays == {"A": 2}
    proto_b, _ = accept(router, peer=("192.0.2.20", 40000))
    proto_b.dataReceived(client_hello("b.example"))
    assert [t.service_id for t in dialed] == ["a", "a", "b"]
    conns[0][0].connectionLost(None)  # one of A's relays ends
    assert router.account_relays == {"A": 1, "B": 1}
    again, _ = accept(router, peer=("192.0.2.10", 41000))
    again.dataReceived(client_hello("a.example"))
    assert [t.service_id for t in dialed][-1] == "a" and again.state == "dialing"


def test_a_router_of_one_account_gives_it_every_relay():
    router, _clock, _ep, dialed = make_router(max_relays=4)
    router.set_route(target(mode="tls", sid="a", domain="a.example", account="A"))
    router.set_route(target(mode="tls", sid="a2", domain="a2.example", account="A"))
    for i in range(4):
        proto, _ = accept(router, peer=("192.0.2.10", 40000 + i))
        proto.dataReceived(client_hello("a.example"))
    assert len(dialed) == 4 and router.stats.account_limit_hits == 0


def test_sni_with_a_root_dot_reaches_its_tls_route_not_another_accounts_fallback():
    """A's TCP fallback and B's TLS route share a port: ``B.Example.`` is B's
    name (the root dot and case folded as the HTTP side folds them); before,
    it missed B's route and was relayed to A's service."""
    router, _clock, _ep, dialed = make_router()
    router.set_route(target(mode="tcp", sid="a", account="A"))
    router.set_route(target(mode="tls", sid="b", domain="b.example", account="B"))
    proto, _ = accept(router)
    proto.dataReceived(client_hello("B.Example."))
    assert [t.service_id for t in dialed] == ["b"]
