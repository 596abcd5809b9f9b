"""review15 pins: L4 relays between hostile tenants.

Sans-IO (fake transports, task.Clock): a private router never serves another
account's target; private services of two accounts on one port number get
their own routers on their own tunnels; SNI routing on a shared host port
sends a name (whole, split byte by byte, or folded) only to the tenant that
owns it, and anything unparsable (garbage, oversized record length, a
ClientHello spread over two records) only to the port's fallback; the peek
is bounded and cut at its deadline; a tenant cannot take or disturb another
tenant's public port or TLS name; one account's total relays never refuse
another account; a direct L4 target at one of the gateway's L4 host ports
(also while it lingers) is refused by the dial guard.  All pass on main.
"""

from __future__ import annotations

import ipaddress
import struct
from types import SimpleNamespace

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.dial.guard import GATEWAY_LISTENER, DialPolicy, loopback_rules
from nbgateway.l4.manager import LISTENER_LINGER
from nbgateway.l4.router import HEADER_TIMEOUT, PortRouter
from nbgateway.l4.sni import MAX_PEEK, MAX_RECORD
from nbgateway.l4.stats import L4Stats
from nbgateway.service._directdial import own_listeners
from tests.l4.fakes import Endpoint, Transport, mapping
from tests.l4.test_manager import make as make_manager
from tests.l4.test_router import accept, make_router, target
from tests.l4.test_sni import client_hello, hello_record


def _shared_port():
    """A's TCP fallback, B's and C's TLS names on one public port."""
    router, clock, ep, dialed = make_router()
    router.set_route(target(mode="tcp", sid="a", account="A", target="10.0.0.1:22"))
    router.set_route(target(mode="tls", sid="b", domain="b.example", account="B",
                            target="10.0.0.2:443"))
    router.set_route(target(mode="tls", sid="c", domain="c.example", account="C",
                            target="10.0.0.3:443"))
    return router, clock, ep, dialed


def test_a_private_router_never_serves_another_accounts_private_target():
    asked = []

    def gate(t, ip):
        asked.append((t.account_id, ip))
        return succeed((True, "", "u", ()))

    router, _clock, _ep, dialed = make_router(gate=gate, account_id="B")
    router.set_route(target(private=True, account="A"))  # misplaced: A's route on B's tunnel
    proto, client = accept(router, peer=("100.64.0.2", 1))
    assert proto.close_reason == "not_overlay" and client.aborted
    assert dialed == [] and asked == []
    # and a public router (no tunnel account) refuses a private target too
    public, _c, _e, dialed2 = make_router(gate=gate)
    public.set_route(target(private=True, account="A"))
    proto2, client2 = accept(public, peer=("100.64.0.2", 2))
    assert proto2.close_reason == "not_overlay" and client2.aborted and dialed2 == []


def test_private_services_of_two_accounts_on_one_port_have_their_own_routers_and_tunnels():
    bound = []

    def tunnel_listen(account, port, factory):
        bound.append((account, port, factory))
        return succeed(SimpleNamespace(stopListening=lambda: None, getHost=lambda: "t"))

    asked = []

    def gate(t, ip):
        asked.append((t.account_id, t.service_id, ip))
        return succeed((True, "", "u", ()))

    m, _reactor, _mgmt, _log, ep = make_manager(tunnel_listen=tunnel_listen, gate=gate,
                                                tunnel_of=lambda a: f"stack-{a}")
    m.mapping_added(mapping(sid="a", account="A", private=True, port=7000))
    m.mapping_added(mapping(sid="b", account="B", private=True, port=7000))
    assert m.errors == {}
    m.account_ready("A")
    m.account_ready("B")
    by_account = {acct: f for acct, _port, f in bound}
    assert sorted(by_account) == ["A", "B"] and by_account["A"] is not by_account["B"]
    for acct, router in by_account.items():
        assert router.account_id == acct
        assert [t.account_id for t in router.targets()] == [acct]
        assert router.tunnel == f"stack-{acct}"
    # a peer on A's tunnel (same tunnel address as one of B's peers) is gated for A's service only
    proto = by_account["A"].buildProtocol(IPv4Address("TCP", "100.64.0.2", 1))
    proto.makeConnection(Transport(peer=("100.64.0.2", 1)))
    assert asked == [("A", "a", "100.64.0.2")] and len(ep.factories) == 1
    # removing B's service leaves A's live relay alone
    m.mapping_removed(mapping(sid="b", account="B", private=True, port=7000))
    assert proto.relay is not None and not proto.relay.ended


def test_each_tenants_name_reaches_only_that_tenant_even_split_byte_by_byte():
    router, _clock, _ep, dialed = _shared_port()
    for name, want in (("c.example", "c"), ("B.EXAMPLE.", "b"), ("d.example", "a")):
        hello = client_hello(name)
        proto, _client = accept(router)
        for i in range(len(hello)):
            proto.dataReceived(hello[i:i + 1])
        assert dialed[-1].service_id == want, name
        assert proto.relay is not None
    assert [t.service_id for t in dialed] == ["c", "b", "a"]


def _two_record_hello(sni: bytes) -> bytes:
    """The hand-built ClientHello's handshake message spread over two records."""
    whole = hello_record(sni)
    hs = whole[5:]
    cut = len(hs) // 2
    return (b"\x16\x03\x01" + struct.pack("!H", cut) + hs[:cut]
            + b"\x16\x03\x01" + struct.pack("!H", len(hs) - cut) + hs[cut:])


def test_unparsable_hellos_go_to_the_fallback_never_to_a_named_tenant():
    """Garbage, an oversized record length, a NUL in the name, a name another
    tenant owns spread over two records: the port's fallback (A), never B or
    C; the bytes the client sent are replayed unchanged to the fallback."""
    cases = [
        b"\x00garbage b.example",
        b"\x16\x03\x01" + struct.pack("!H", MAX_RECORD + 1) + b"b.example",
        hello_record(b"b.example\x00.c.example"),
        _two_record_hello(b"b.example"),
        hello_record(b"b.example" + b"x" * 300),
    ]
    for data in cases:
        router, _clock, ep, dialed = _shared_port()
        proto, _client = accept(router)
        proto.dataReceived(data)
        if proto.relay is None:  # the two-record hello: the first record is parsed alone
            proto.readConnectionLost()
        assert [t.service_id for t in dialed] == ["a"], data[:12]
        _up_proto, up = ep.complete()
        assert up.value() == data


def test_without_a_fallback_an_unknown_or_missing_name_reaches_nobody():
    router, _clock, _ep, dialed = make_router()
    router.set_route(target(mode="tls", sid="b", domain="b.example", account="B"))
    for data in (client_hello("x.example"), client_hello(None), b"GET / HTTP/1.1\r\n\r\n"):
        proto, client = accept(router)
        proto.dataReceived(data)
        assert proto.close_reason == "no_route" and client.aborted
        proto.connectionLost(None)  # what the aborted transport then calls
    assert dialed == [] and router.stats.no_route == 3 and router.connections == {}


def test_the_peek_is_bounded_and_a_slow_hello_is_cut_at_the_deadline():
    router, clock, _ep, dialed = _shared_port()
    proto, client = accept(router)
    proto.dataReceived(b"\x16\x03\x01" + struct.pack("!H", MAX_RECORD))
    for _ in range(MAX_RECORD // 1024 - 1):
        proto.dataReceived(b"\x00" * 1024)
        clock.advance(HEADER_TIMEOUT / 32)
    assert proto._peeker is not None and len(proto._peeker.buffered) <= MAX_PEEK
    assert dialed == [] and not client.aborted
    clock.advance(HEADER_TIMEOUT)
    assert client.aborted and proto.close_reason == "header_timeout"
    proto.connectionLost(None)  # what the aborted transport then calls
    assert router.stats.header_timeouts == 1 and router.connections == {}
    assert dialed == []


def test_a_tenant_cannot_take_or_disturb_another_tenants_public_port_or_name():
    m, reactor, mgmt, _log, ep = make_manager()
    m.mapping_added(mapping(sid="a", account="A", port=7000))
    m.mapping_added(mapping(mode="tls", sid="a-tls", account="A", port=7100,
                            domain="shop.a.example"))
    router = m.public[7000]
    proto = router.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
    proto.makeConnection(Transport())
    assert proto.relay is not None and len(ep.factories) == 1
    # B asks for the same fallback port and the same TLS name on A's TLS port
    m.mapping_added(mapping(sid="b", account="B", port=7000))
    m.mapping_added(mapping(mode="tls", sid="b-tls", account="B", port=7100,
                            domain="SHOP.a.example."))
    assert m.errors["b"] == "port 7000 is already used by service a"
    assert m.errors["b-tls"] == ("port 7100: server name shop.a.example is already used "
                                 "by service a-tls")
    assert router.fallback.service_id == "a"
    assert m.public[7100].sni_routes["shop.a.example"].service_id == "a-tls"
    # B's refused services going away (or changing) closes nothing of A's
    m.mapping_removed(mapping(sid="b", account="B", port=7000))
    m.mapping_changed(mapping(sid="b-tls", account="B", port=7100, mode="tls",
                              domain="shop.a.example"),
                      mapping(sid="b-tls", account="B", port=7200, mode="tls",
                              domain="b.example"))
    assert not proto.relay.ended and router.fallback.service_id == "a"
    assert [s[0] for s in reactor.tcpServers].count(7000) == 1
    assert ("b", pb.PROXY_STATUS_ERROR, "port 7000 is already used by service a") in mgmt.reports


def test_one_accounts_total_relays_never_refuse_another_account():
    totals: dict[str, int] = {}

    def router(port):
        return PortRouter(port, clock=make_router()[1], dial=lambda t: Endpoint(),
                          stats=L4Stats(), totals=totals, max_total=2)

    r1, r2 = router(7000), router(7001)
    r1.set_route(target(mode="tcp", sid="a1", account="A", port=7000))
    r2.set_route(target(mode="tls", sid="a2", domain="a.example", account="A", port=7001))
    r2.set_route(target(mode="tls", sid="b", domain="b.example", account="B", port=7001))
    held = [accept(r1, peer=("192.0.2.1", 1000 + i))[0] for i in range(2)]
    assert totals == {"A": 2}
    pa, ca = accept(r2, peer=("192.0.2.1", 2000))
    pa.dataReceived(client_hello("a.example"))
    assert pa.close_reason == "relay_limit" and ca.aborted
    for i in range(2):
        pb_, _ = accept(r2, peer=("192.0.2.9", 3000 + i))
        pb_.dataReceived(client_hello("b.example"))
        assert pb_.state == "dialing"
    assert totals == {"A": 2, "B": 2}
    held[0].connectionLost(None)
    pa2, _ = accept(r2, peer=("192.0.2.1", 2001))
    pa2.dataReceived(client_hello("a.example"))
    assert pa2.state == "dialing" and totals == {"A": 2, "B": 2}


def test_a_direct_target_at_an_l4_host_port_is_refused_also_while_it_lingers():
    m, reactor, _mgmt, _log, _ep = make_manager()
    m.mapping_added(mapping(sid="a", account="A", port=7000))
    cfg = SimpleNamespace(addr=None, health_addr=None, mgmt="")
    policy = DialPolicy(loopback_rules("B"), listeners=lambda: own_listeners(cfg, None, m, None),
                        is_local=lambda ip: False)
    loop = ipaddress.ip_address("127.0.0.1")
    assert policy.check("B", loop, 7000).reason == GATEWAY_LISTENER
    assert policy.check("B", ipaddress.ip_address("::ffff:127.0.0.1"), 7000).reason \
        == GATEWAY_LISTENER
    assert policy.check("B", loop, 7001)  # not one of ours: the allow-list decides
    m.mapping_removed(mapping(sid="a", account="A", port=7000))
    reactor.advance(LISTENER_LINGER / 2)  # still bound, lingering
    assert 7000 in m.public and policy.check("B", loop, 7000).reason == GATEWAY_LISTENER
    reactor.advance(LISTENER_LINGER)
    assert 7000 not in m.public
