"""The tunnel DNS responder over IPv6 (issue 11 item 7), as the gateway runs it:
bound on every tunnel address of the account (``interface=""``), the packet
filter built from a roster whose peers have a v4 ``/32`` and a v6 ``/128``, the
served names answering A and AAAA with the gateway's own addresses.  Two
in-memory netstacks on ``task.Clock``; the client side is twisted.names."""

from __future__ import annotations

import ipaddress

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial import unittest

from nbgateway.dns.server import DNSResponderFactory, listen_dns
from nbgateway.dns.zone import ZoneAuthority, service_zones
from nbgateway.mgmt.netmap import RosterPeer, dns_rule
from nbgateway.netstack.endpoints import TunnelClientEndpoint
from nbgateway.netstack.filter import Rule
from nbgateway.netstack.testing import make_stack_pair, run_until
from nbgateway.netstack.udp import listen_udp
from tests.dns.test_server_netstack import _Controller

CLIENT4, SERVER4 = "100.64.0.10", "100.64.0.99"
CLIENT6, SERVER6 = "fd12:3456:789a::10", "fd12:3456:789a::99"
STRANGER6 = "fd12:3456:789a::77"
APP = "app.gw.test"


class TunnelDNSv6Tests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.client, self.server, self.link = make_stack_pair(
            self.clock, (CLIENT4, CLIENT6, STRANGER6), (SERVER4, SERVER6))
        roster = [RosterPeer("k", b"k" * 32, (ipaddress.ip_network(f"{CLIENT4}/32"),
                                              ipaddress.ip_network(f"{CLIENT6}/128")))]
        self.server.filter.set_rules([Rule.make(**dns_rule(roster).rule_kwargs())],
                                     default="deny")
        zones = service_zones([APP], [SERVER4, SERVER6])
        self.factory = DNSResponderFactory(ZoneAuthority(zones), clock=self.clock)
        self.listeners = self.successResultOf(listen_dns(self.server, self.factory, ""))
        self.addCleanup(self.listeners.stop)

    def resolve(self, d: defer.Deferred):
        assert run_until(self.clock, lambda: d.called, timeout=30)
        return d

    def udp_query(self, name, qtype, server, *, source="", timeout=5):
        proto = dns.DNSDatagramProtocol(_Controller(), reactor=self.clock)
        port = listen_udp(self.client, 0, proto, interface=source)
        self.addCleanup(port.stopListening)
        return self.resolve(proto.query((server, 53), [dns.Query(name, qtype)], timeout=timeout))

    @staticmethod
    def aaaa(m: dns.Message) -> list[str]:
        return [str(ipaddress.IPv6Address(a.payload.address)) for a in m.answers
                if a.type == dns.AAAA]

    def test_aaaa_over_ipv6_udp(self):
        m = self.successResultOf(self.udp_query(APP, dns.AAAA, SERVER6, source=CLIENT6))
        assert m.rCode == dns.OK and m.auth
        assert self.aaaa(m) == [SERVER6]

    def test_aaaa_over_ipv4_and_a_over_ipv6(self):
        m = self.successResultOf(self.udp_query(APP, dns.AAAA, SERVER4, source=CLIENT4))
        assert self.aaaa(m) == [SERVER6]
        m = self.successResultOf(self.udp_query(APP, dns.A, SERVER6, source=CLIENT6))
        assert [a.payload.dottedQuad() for a in m.answers] == [SERVER4]

    def test_aaaa_over_ipv6_tcp(self):
        controller = _Controller()
        clock = self.clock

        class F(ClientFactory):
            def buildProtocol(self, addr):
                return dns.DNSProtocol(controller, reactor=clock)

        ep = TunnelClientEndpoint(self.client, SERVER6, 53, timeout=10)
        proto = self.successResultOf(self.resolve(ep.connect(F())))
        m = self.successResultOf(self.resolve(
            proto.query([dns.Query(APP, dns.AAAA)], timeout=10)))
        assert self.aaaa(m) == [SERVER6]
        proto.transport.loseConnection()
        run_until(self.clock, lambda: not self.factory.connections, timeout=30)

    def test_v6_source_outside_the_roster_is_dropped(self):
        f = self.failureResultOf(
            self.udp_query(APP, dns.AAAA, SERVER6, source=STRANGER6, timeout=2))
        assert f.check(dns.DNSQueryTimeoutError)
        assert self.server.counters["drop_filtered"] >= 1
