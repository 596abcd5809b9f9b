"""The DNS responder on a tunnel address: two in-memory netstacks on task.Clock, the
server bound with listen_dns (UDP via listen_udp, TCP via TunnelServerEndpoint), queried
by twisted.names' DNS protocols running on the other stack."""

from __future__ import annotations

import ipaddress

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial import unittest

from nbgateway.dns.server import DNSResponderFactory, listen_dns
from nbgateway.dns.zone import ZoneAuthority, service_zones
from nbgateway.mgmt.netmap import DnsRecord, DnsZone, RosterPeer, dns_rule
from nbgateway.netstack.endpoints import TunnelClientEndpoint, TunnelServerEndpoint
from nbgateway.netstack.filter import Rule
from nbgateway.netstack.testing import make_stack_pair, run_until
from nbgateway.netstack.udp import listen_udp

CLIENT4, SERVER4, CLIENT6, SERVER6 = "100.64.0.10", "100.64.0.99", "fd00::10", "fd00::99"


class _Controller:
    """What a client-side DNS protocol reports to (nothing to do here)."""

    def connectionMade(self, proto):
        self.proto = proto

    def connectionLost(self, proto):
        pass

    def messageReceived(self, message, proto, address=None):
        pass


class TunnelDNSTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.client, self.server, self.link = make_stack_pair(
            self.clock, (CLIENT4, CLIENT6), (SERVER4, SERVER6))
        zones = [*service_zones(["app.eu.proxy.netbird.io"], [SERVER4]),
                 DnsZone("netbird.test.", (DnsRecord("laptop.netbird.test.", 1, 300, CLIENT4),))]
        self.factory = DNSResponderFactory(ZoneAuthority(zones), clock=self.clock)
        d = listen_dns(self.server, self.factory, SERVER4)
        self.listeners = self.successResultOf(d)
        self.addCleanup(self.listeners.stop)

    def resolve(self, d: defer.Deferred):
        assert run_until(self.clock, lambda: d.called, timeout=30)
        return d

    def udp_query(self, name, qtype=dns.A, server=SERVER4, timeout=5):
        proto = dns.DNSDatagramProtocol(_Controller(), reactor=self.clock)
        port = listen_udp(self.client, 0, proto)
        self.addCleanup(port.stopListening)
        return self.resolve(proto.query((server, 53), [dns.Query(name, qtype)], timeout=timeout))

    def test_udp_a_answer_on_the_tunnel_address(self):
        m = self.successResultOf(self.udp_query("app.eu.proxy.netbird.io"))
        assert m.rCode == dns.OK and m.auth
        assert [(a.ttl, a.payload.dottedQuad()) for a in m.answers] == [(5, SERVER4)]
        assert self.server.counters["udp_rx"] >= 1

    def test_udp_refused_and_nxdomain(self):
        assert self.successResultOf(self.udp_query("example.com")).rCode == dns.EREFUSED
        assert self.successResultOf(self.udp_query("x.netbird.test")).rCode == dns.ENAME

    def test_bound_to_the_tunnel_address_only(self):
        # nothing listens on the IPv6 tunnel address: port unreachable, no answer
        f = self.failureResultOf(self.udp_query("app.eu.proxy.netbird.io", server=SERVER6))
        assert f.check(dns.DNSQueryTimeoutError)
        assert self.server.counters["udp_no_port"] == 1

    def test_zone_replacement_seen_over_the_tunnel(self):
        self.factory.replace_zones(service_zones(["new.example.org"], [SERVER4]))
        m = self.successResultOf(self.udp_query("new.example.org"))
        assert [a.payload.dottedQuad() for a in m.answers] == [SERVER4]
        assert self.successResultOf(self.udp_query("app.eu.proxy.netbird.io")).rCode == \
            dns.EREFUSED

    def test_tcp_query_through_the_tunnel(self):
        controller = _Controller()

        class F(ClientFactory):
            def buildProtocol(self, addr):
                return dns.DNSProtocol(controller, reactor=self_clock)

        self_clock = self.clock
        ep = TunnelClientEndpoint(self.client, SERVER4, 53, timeout=10)
        proto = self.successResultOf(self.resolve(ep.connect(F())))
        d = proto.query([dns.Query("laptop.netbird.test", dns.A)], timeout=10)
        m = self.successResultOf(self.resolve(d))
        assert [(a.ttl, a.payload.dottedQuad()) for a in m.answers] == [(300, CLIENT4)]
        proto.transport.loseConnection()
        run_until(self.clock, lambda: not self.factory.connections, timeout=30)
        assert self.factory.connections == []

    def test_packet_filter_from_the_roster_admits_dns(self):
        roster = [RosterPeer("k", b"k" * 32, (ipaddress.ip_network(f"{CLIENT4}/32"),))]
        self.server.filter.set_rules([Rule.make(**dns_rule(roster).rule_kwargs())],
                                     default="deny")
        self.factory.replace_zones(service_zones(["app.test"], [SERVER4, SERVER6]))
        assert self.successResultOf(self.udp_query("app.test")).rCode == dns.OK
        # an address outside the roster is dropped silently by the filter
        self.listeners_v6 = self.successResultOf(listen_dns(self.server, self.factory, SERVER6))
        self.addCleanup(self.listeners_v6.stop)
        f = self.failureResultOf(self.udp_query("app.test", server=SERVER6, timeout=2))
        assert f.check(dns.DNSQueryTimeoutError)
        assert self.server.counters["drop_filtered"] >= 1

    def test_listen_dns_fails_cleanly_when_taken(self):
        f = self.failureResultOf(listen_dns(self.server, self.factory, SERVER4))
        assert f.check(CannotListenError)
        # TCP 53 taken on the v6 address: the UDP half of the attempt is released again
        tcp = self.successResultOf(
            TunnelServerEndpoint(self.server, 53, interface=SERVER6).listen(ClientFactory()))
        self.addCleanup(tcp.stopListening)
        f = self.failureResultOf(listen_dns(self.server, self.factory, SERVER6))
        assert f.check(CannotListenError)
        listen_udp(self.server, 53, dns.DNSDatagramProtocol(_Controller()),
                   interface=SERVER6).stopListening()
