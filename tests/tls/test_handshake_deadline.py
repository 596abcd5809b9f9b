"""TLS handshake deadline and a never-raising TLS close (issue 11.5).

A client that sends one byte of a ClientHello is closed at the handshake
deadline (task.Clock unit test; the netstack in memory), a completed
handshake is never cut by it, and closing a connection mid-handshake on a
transport that reports the loss synchronously (the netstack) logs nothing:
trial fails any test that logs an error, which is how the old
``'NoneType' object has no attribute 'shutdown'`` traceback showed."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionAborted
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource

from nbgateway.netstack.endpoints import TunnelClientEndpoint, TunnelServerEndpoint
from nbgateway.netstack.testing import make_stack_pair
from nbgateway.proxy.streaming import ProxySite
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import SNIServerCreator
from nbgateway.tls.dispatch import DeadlineTLSProtocol, TLSOrPlainFactory

ADDR = IPv4Address("TCP", "100.64.0.2", 40000)


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"tls" if request.isSecure() else b"plain"


class SyncLossTransport(StringTransport):
    """Reports connection loss from abortConnection synchronously, as the
    netstack's connections do."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol = None
        self.aborted = 0

    def abortConnection(self) -> None:
        if self.protocol is not None and self.connected:
            self.aborted += 1  # connections lost
            self.connected = False
            self.protocol.connectionLost(Failure(ConnectionAborted()))

    def loseConnection(self) -> None:
        self.abortConnection()

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class OneByte(Protocol):
    def __init__(self, payload: bytes = b"\x16") -> None:
        self.payload = payload
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)


def _store(test: unittest.TestCase) -> CertificateStore:
    return CertificateStore(None, None, test.mktemp())


class ClockTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.factory = TLSOrPlainFactory(SNIServerCreator(_store(self)), ProxySite(Hello()),
                                         clock=self.clock, handshake_timeout=10)

    def connect(self, transport: StringTransport):
        proto = self.factory.buildProtocol(ADDR)
        transport.protocol = proto
        proto.makeConnection(transport)
        proto.dataReceived(b"\x16")  # one byte of a ClientHello
        self.assertIsInstance(proto.inner, DeadlineTLSProtocol)
        return proto

    def test_one_byte_is_closed_at_the_deadline(self):
        transport = SyncLossTransport()
        self.connect(transport)
        self.clock.advance(9.9)
        self.assertEqual((transport.aborted, self.factory.handshake_timeouts), (0, 0))
        self.clock.advance(0.2)
        self.assertEqual((transport.aborted, self.factory.handshake_timeouts), (1, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nothing left armed

    def test_close_mid_handshake_on_a_synchronous_transport_never_raises(self):
        transport = SyncLossTransport()
        sniffer = self.connect(transport)
        tls = sniffer.inner
        tls.loseConnection()  # Twisted's own would raise AttributeError here
        tls.loseConnection()
        tls.abortConnection()
        self.assertEqual(transport.aborted, 1)
        self.assertIsNone(tls.getHandle())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadline_can_be_disabled(self):
        factory = TLSOrPlainFactory(SNIServerCreator(_store(self)), ProxySite(Hello()),
                                    clock=self.clock, handshake_timeout=None)
        proto = factory.buildProtocol(ADDR)
        transport = SyncLossTransport()
        transport.protocol = proto
        proto.makeConnection(transport)
        proto.dataReceived(b"\x16")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        transport.abortConnection()
        self.assertEqual(transport.aborted, 1)


class TunnelHandshakeTests(unittest.TestCase):
    """Real netstack connections: one ClientHello byte through the tunnel."""

    @defer.inlineCallbacks
    def listen(self, *, handshake_timeout, idle_timeout=None):
        self.store = _store(self)
        self.gw, self.peer, self.link = make_stack_pair(
            reactor, ("100.64.0.1",), ("100.64.0.2",), latency=0.0, jitter=0.0)
        self.addCleanup(self.link.close)
        self.addCleanup(self.peer.close)
        self.addCleanup(self.gw.close)
        self.factory = TLSOrPlainFactory(
            SNIServerCreator(self.store), ProxySite(Hello(), timeout=idle_timeout),
            clock=reactor, handshake_timeout=handshake_timeout)
        port = yield TunnelServerEndpoint(self.gw, 443, interface="100.64.0.1").listen(
            self.factory)
        self.addCleanup(port.stopListening)

    @defer.inlineCallbacks
    def test_stalled_handshake_closed_at_deadline(self):
        yield self.listen(handshake_timeout=0.5)
        client = OneByte()
        started = reactor.seconds()
        yield connectProtocol(TunnelClientEndpoint(self.peer, "100.64.0.1", 443, timeout=5),
                              client)
        yield client.closed
        self.assertLess(reactor.seconds() - started, 3.0)
        self.assertEqual(self.factory.handshake_timeouts, 1)

    @defer.inlineCallbacks
    def test_idle_timeout_mid_handshake_logs_no_traceback(self):
        # the old failure: the HTTP idle timeout closes a connection whose
        # handshake never finished, on the netstack (synchronous loss)
        yield self.listen(handshake_timeout=None, idle_timeout=0.3)
        client = OneByte()
        yield connectProtocol(TunnelClientEndpoint(self.peer, "100.64.0.1", 443, timeout=5),
                              client)
        yield client.closed
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(self.flushLoggedErrors(), [])


class CompletedHandshakeTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_deadline_never_cuts_a_completed_handshake(self):
        store = _store(self)
        factory = TLSOrPlainFactory(SNIServerCreator(store, "svc.example"),
                                    ProxySite(Hello()), clock=reactor, handshake_timeout=0.3)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        ca = Certificate.loadPEM(Path(store.ca.cert_path).read_bytes())
        ep = wrapClientTLS(
            optionsForClientTLS("svc.example", trustRoot=trustRootFromCertificates([ca])),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))

        class Client(Protocol):
            def __init__(self) -> None:
                self.buf = b""
                self.handshaken: defer.Deferred = defer.Deferred()
                self.closed: defer.Deferred = defer.Deferred()

            def handshakeCompleted(self) -> None:
                self.handshaken.callback(None)

            def dataReceived(self, data: bytes) -> None:
                self.buf += data

            def connectionLost(self, reason) -> None:
                self.closed.callback(None)

        from twisted.internet.interfaces import IHandshakeListener
        from zope.interface import directlyProvides

        client = Client()
        directlyProvides(client, IHandshakeListener)
        yield connectProtocol(ep, client)
        yield client.handshaken
        yield task.deferLater(reactor, 0.6, lambda: None)  # twice the deadline, idle
        client.transport.write(b"GET / HTTP/1.1\r\nHost: svc.example\r\nConnection: close\r\n\r\n")
        yield client.closed
        self.assertTrue(client.buf.startswith(b"HTTP/1.1 200"), client.buf[:60])
        self.assertEqual(factory.handshake_timeouts, 0)
