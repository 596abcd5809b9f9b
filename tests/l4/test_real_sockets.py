"""The manager and relays on the real reactor and loopback sockets: a changed
mapping on the same port keeps serving (the listener is kept), UDP likewise."""

from __future__ import annotations

import socket

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.trial import unittest

from nbgateway.l4.manager import L4Manager
from nbgateway.l4.udp import UDPRelays
from tests.l4.fakes import mapping
from tests.ports import free_port


class Tag(Protocol):
    """An upstream that answers every connection with its tag, then echoes."""

    def connectionMade(self) -> None:
        self.transport.write(self.factory.tag)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Client(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.got: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= 2 and not self.got.called:
            self.got.callback(self.data)


class UDPTag(DatagramProtocol):
    def __init__(self, tag: bytes) -> None:
        self.tag = tag

    def datagramReceived(self, data, addr):
        self.transport.write(self.tag + data, addr)


class RealSocketTests(unittest.TestCase):
    def setUp(self):
        self.ports = []
        for tag in (b"A", b"B"):
            f = Factory.forProtocol(Tag)
            f.tag = tag
            self.ports.append(reactor.listenTCP(0, f, interface="127.0.0.1"))
        self.udp_ports = [reactor.listenUDP(0, UDPTag(t), interface="127.0.0.1")
                          for t in (b"A", b"B")]

        def dial(target):
            return TCP4ClientEndpoint(reactor, target.host, target.port, timeout=5)

        def udp_open(target, protocol):
            p = reactor.listenUDP(0, protocol, interface="127.0.0.1")
            p.connect(target.host, target.port)
            return p

        self.m = L4Manager(reactor, dial=dial, bind_host="127.0.0.1")
        self.m.udp = UDPRelays(self.m, listen=lambda t, proto: reactor.listenUDP(
            t.listen_port, proto, interface="127.0.0.1"), open_upstream=udp_open)

    def tearDown(self):
        ds = [self.m.close_all()]
        ds += [defer.maybeDeferred(p.stopListening) for p in self.ports + self.udp_ports]
        return defer.DeferredList(ds)

    @defer.inlineCallbacks
    def ask(self, port: int) -> defer.Deferred:
        client = Client()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.write(b"x")
        data = yield client.got
        client.transport.loseConnection()
        return data

    @defer.inlineCallbacks
    def test_changed_mapping_on_the_same_port_keeps_serving(self):
        port = free_port()
        a, b = (p.getHost().port for p in self.ports)
        old = mapping(port=port, target=f"127.0.0.1:{a}")
        self.m.mapping_added(old)
        self.assertEqual((yield self.ask(port)), b"Ax")
        new = mapping(port=port, target=f"127.0.0.1:{b}")
        self.m.mapping_changed(old, new)
        self.assertEqual(self.m.errors, {})
        self.assertEqual((yield self.ask(port)), b"Bx")

    @defer.inlineCallbacks
    def test_changed_udp_mapping_on_the_same_port_keeps_serving(self):
        port = free_port(socket.SOCK_DGRAM)
        a, b = (p.getHost().port for p in self.udp_ports)
        old = mapping(mode="udp", port=port, target=f"127.0.0.1:{a}")
        self.m.mapping_added(old)
        replies: list[bytes] = []

        class C(DatagramProtocol):
            def datagramReceived(self, data, addr):
                replies.append(data)

        client = reactor.listenUDP(0, C(), interface="127.0.0.1")
        self.addCleanup(client.stopListening)

        @defer.inlineCallbacks
        def send_and_wait(payload: bytes, count: int):
            client.write(payload, ("127.0.0.1", port))
            for _ in range(100):
                if len(replies) >= count:
                    return
                yield deferLater(0.02)

        def deferLater(t):
            return task.deferLater(reactor, t, lambda: None)

        yield send_and_wait(b"1", 1)
        self.m.mapping_changed(old, mapping(mode="udp", port=port, target=f"127.0.0.1:{b}"))
        self.assertEqual(self.m.udp.errors, {})
        yield send_and_wait(b"2", 2)
        self.assertEqual(replies, [b"A1", b"B2"])
