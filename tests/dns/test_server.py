"""DNS responder on host sockets (127.0.0.1), queried by twisted.names' real client
Resolver over UDP and TCP; plus unit checks of the TCP bounds on task.Clock."""

from __future__ import annotations

import socket
import struct

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.names import client, dns, error
from twisted.trial import unittest

from nbgateway.dns.server import DNSResponderFactory
from nbgateway.dns.zone import ZoneAuthority
from nbgateway.mgmt.netmap import DnsRecord, DnsZone

ZONES = [
    DnsZone("eu.proxy.netbird.io.", (
        DnsRecord("myapp.eu.proxy.netbird.io.", 1, 5, "100.64.0.99"),), authoritative=False),
    DnsZone("netbird.test.", (
        DnsRecord("laptop.netbird.test.", 1, 300, "100.64.0.10"),
        DnsRecord("laptop.netbird.test.", 28, 300, "fd00::10"),
        *(DnsRecord("big.netbird.test.", 1, 60, f"100.64.1.{i}") for i in range(1, 61)),
    )),
]


class HostSocketTests(unittest.TestCase):
    def setUp(self):
        self.factory = DNSResponderFactory(ZoneAuthority(ZONES))
        # UDP and TCP on the same port number (the client falls back to TCP there)
        for _ in range(20):
            self.tcp = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
            port = self.tcp.getHost().port
            try:
                self.udp = reactor.listenUDP(port, self.factory.datagram_protocol(),
                                             interface="127.0.0.1")
                break
            except CannotListenError:
                self.tcp.stopListening()
        else:
            raise AssertionError("no free UDP+TCP port pair on 127.0.0.1")
        self.resolver = client.Resolver(servers=[("127.0.0.1", port)], reactor=reactor)
        self.addCleanup(self.udp.stopListening)
        self.addCleanup(self.tcp.stopListening)
        self.addCleanup(self._close_resolver)

    def _close_resolver(self):
        for p in list(self.resolver.connections):
            p.transport.loseConnection()

    @defer.inlineCallbacks
    def test_a_answer_with_ttl_and_aa(self):
        answers, authority, _ = yield self.resolver.lookupAddress("myapp.eu.proxy.netbird.io")
        assert [(str(a.name), a.ttl, a.payload.dottedQuad()) for a in answers] == [
            ("myapp.eu.proxy.netbird.io", 5, "100.64.0.99")]
        assert authority == []
        msg = yield self.resolver.queryUDP([dns.Query("laptop.netbird.test", dns.A)])
        assert msg.auth and not msg.recAv and msg.rCode == dns.OK
        assert msg.answers[0].ttl == 300

    @defer.inlineCallbacks
    def test_aaaa_answer(self):
        answers, _, _ = yield self.resolver.lookupIPV6Address("laptop.netbird.test")
        assert [(a.type, a.ttl, socket.inet_ntop(socket.AF_INET6, a.payload.address))
                for a in answers] == [(dns.AAAA, 300, "fd00::10")]

    @defer.inlineCallbacks
    def test_refused_outside_the_zone(self):
        with self.assertRaises(error.DNSQueryRefusedError):
            yield self.resolver.lookupAddress("example.com")
        assert self.factory.counters["refused"] == 1

    @defer.inlineCallbacks
    def test_nxdomain_and_nodata(self):
        with self.assertRaises(error.DNSNameError):
            yield self.resolver.lookupAddress("nope.netbird.test")
        answers, authority, _ = yield self.resolver.lookupIPV6Address("myapp.eu.proxy.netbird.io")
        assert answers == [] and [r.type for r in authority] == [dns.SOA]

    @defer.inlineCallbacks
    def test_zone_replacement(self):
        yield self.resolver.lookupAddress("laptop.netbird.test")
        self.factory.replace_zones([DnsZone("other.test.", (
            DnsRecord("svc.other.test.", 1, 7, "100.64.0.42"),))])
        answers, _, _ = yield self.resolver.lookupAddress("svc.other.test")
        assert [(a.ttl, a.payload.dottedQuad()) for a in answers] == [(7, "100.64.0.42")]
        with self.assertRaises(error.DNSQueryRefusedError):
            yield self.resolver.lookupAddress("laptop.netbird.test")

    @defer.inlineCallbacks
    def test_large_answer_sets_tc_over_udp_and_is_complete_over_tcp(self):
        msg = yield self.resolver.queryUDP([dns.Query("big.netbird.test", dns.A)])
        assert msg.trunc and msg.answers == []
        # the client Resolver retries a truncated answer over TCP by itself
        answers, _, _ = yield self.resolver.lookupAddress("big.netbird.test")
        assert len(answers) == 60
        assert self.factory.counters["truncated"] == 2
        assert self.factory.counters["noerror"] == 3

    @defer.inlineCallbacks
    def test_edns_payload_size_is_honoured(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.setblocking(False)
        q = dns.Message(id=77, recDes=1)
        q.queries = [dns.Query("big.netbird.test", dns.A)]
        q.additional = [dns._OPTHeader(udpPayloadSize=4096)]
        sock.sendto(q.toStr(), ("127.0.0.1", self.udp.getHost().port))
        data = yield _recv(sock)
        m = dns.Message()
        m.fromStr(data)
        # 60 A records fit in the 1232-byte cap: no truncation
        assert m.id == 77 and not m.trunc and len(m.answers) == 60 and m.recDes

    @defer.inlineCallbacks
    def test_garbage_is_dropped_and_the_server_keeps_answering(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        addr = ("127.0.0.1", self.udp.getHost().port)
        for junk in (b"", b"\x00" * 3, b"\xff" * 40, struct.pack("!HHHHHH", 1, 0, 5, 0, 0, 0)):
            sock.sendto(junk, addr)
        resp = dns.Message(id=9, answer=1)  # a response aimed at the server: ignored
        sock.sendto(resp.toStr(), addr)
        two = dns.Message(id=10)
        two.queries = [dns.Query("a.netbird.test"), dns.Query("b.netbird.test")]
        sock.sendto(two.toStr(), addr)
        yield deferLater(reactor, 0.05, lambda: None)
        answers, _, _ = yield self.resolver.lookupAddress("laptop.netbird.test")
        assert answers
        c = self.factory.counters
        # b"" and 3 bytes do not parse; 0xff... parses as a response (QR set); a header
        # announcing 5 questions without any parses leniently to zero questions: FORMERR
        assert (c["malformed"], c["unexpected_response"], c["formerr"]) == (2, 2, 2)


@defer.inlineCallbacks
def _recv(sock, timeout=5.0):
    deadline = reactor.seconds() + timeout
    while True:
        try:
            data, _ = sock.recvfrom(65535)
            return data
        except BlockingIOError:
            if reactor.seconds() > deadline:
                raise AssertionError("no reply") from None
            yield deferLater(reactor, 0.01, lambda: None)


class TCPBoundsTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.factory = DNSResponderFactory(ZoneAuthority(ZONES), clock=self.clock,
                                           max_connections=2, idle_timeout=10)

    def connect(self):
        p = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        if p is None:
            return None, None
        t = StringTransport()
        p.makeConnection(t)
        return p, t

    def test_query_over_tcp_stream(self):
        p, t = self.connect()
        q = dns.Message(id=5)
        q.queries = [dns.Query("laptop.netbird.test", dns.AAAA)]
        data = q.toStr()
        p.dataReceived(struct.pack("!H", len(data)) + data)
        out = t.value()
        (n,) = struct.unpack("!H", out[:2])
        m = dns.Message()
        m.fromStr(out[2:2 + n])
        assert m.id == 5 and m.auth and [a.type for a in m.answers] == [dns.AAAA]

    def test_idle_connection_is_aborted(self):
        p, t = self.connect()
        self.clock.advance(9)
        p.dataReceived(b"\x00")  # a partial length prefix does not count as a query
        self.clock.advance(1.5)
        assert t.disconnecting or t.disconnected
        assert self.factory.counters["tcp_idle_timeout"] == 1

    def test_connection_limit_and_oversized(self):
        p1, t1 = self.connect()
        _p2, _t2 = self.connect()
        assert self.connect() == (None, None)
        assert self.factory.counters["tcp_refused"] == 1
        p1.dataReceived(struct.pack("!H", 60000) + b"x" * 10)
        assert t1.disconnecting and self.factory.counters["oversized"] == 1
        p1.connectionLost(None)
        assert self.connect()[0] is not None
