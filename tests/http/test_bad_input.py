"""Bad input against a running gateway listener (issue 6 acceptance "Bad input").

A :class:`GatewayService` (in-memory fake management, one public mapping whose
upstream is a real HTTP server on 127.0.0.1) listens on 127.0.0.1; raw TCP
clients send malformed request lines, header floods, oversized headers,
slowloris-style trickles and a garbage TLS ClientHello to its TLS-or-plain
public port.  Each must end in a clear 4xx or a connection close; every
server-side connection is tracked so the tests check that none of them holds
more than a bounded amount of buffered input and that all of them are gone
afterwards (counts and buffer sizes, not time); and a normal client is served
while the bad ones are connected.

The read-header deadline is also checked deterministically on a bare
``ProxySite`` with ``task.Clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import resource, server

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.proxy.streaming import ProxySite
from tests.test_service import start_gateway

HOST = b"app.example"
#: Twisted's request-head limit is 16 KiB (line + headers); past it a
#: connection holds at most the rest of one socket read (64 KiB) until it is
#: closed.  The floods below send several times this much.
BUFFER_BOUND = 128 * 1024
#: safety net for a test that would otherwise hang (not a timing assertion)
GUARD = 20


class Hello(resource.Resource):
    isLeaf = True

    def render(self, request):
        return b"hello"


class NoPeerChannel:
    """The account's peer channel is not needed here (public mapping)."""

    def __init__(self, account_id, private_key, on_map):
        pass

    def start(self):
        pass

    def stop(self):
        pass


class RawClient(Protocol):
    """Collects everything the server sends; ``closed`` fires with it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(bytes(self.data))


def _buffered(channel: Any) -> int:
    """Bytes of client input a server-side channel currently holds."""
    if channel is None:
        return 0
    total = len(getattr(channel, "_buffer", b""))  # LineReceiver line buffer
    total += sum(len(x) for x in getattr(channel, "_dataBuffer", []))
    inner = getattr(channel, "wrappedProtocol", None)  # TLS: the HTTP channel inside
    return total + (_buffered(inner) if inner is not None else 0)


class BadInputTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.upstream = reactor.listenTCP(0, server.Site(Hello()), interface="127.0.0.1")
        self.svc, self.mgmt = start_gateway(self, NoPeerChannel,
                                            direct_upstream_allow="127.0.0.1/32@acct")
        port = self.upstream.getHost().port
        yield self.mgmt.snapshot([pb.ProxyMapping(
            type=pb.UPDATE_TYPE_CREATED, id="svc1", account_id="acct", domain=HOST.decode(),
            auth_token="tok",
            path=[pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/",
                                 options=pb.PathTargetOptions(direct_upstream=True))])])
        self.port = self.svc.public_port.getHost().port
        self.factory = self.svc.public_port.factory  # TLSOrPlainFactory
        self.site = self.factory.plain_factory  # ProxySite
        # track every server-side connection of the public listener
        self.open: set[Any] = set()
        self.peak_buffer = 0
        self._install_tracking()

    def _install_tracking(self) -> None:
        """Wrap ``self.factory.buildProtocol`` (a TLSOrPlainFactory) so every
        server-side connection is in ``self.open`` until it is lost, and the
        largest input buffer any of them held is ``self.peak_buffer``."""
        build = self.factory.buildProtocol

        def tracked(addr):
            sniffer = build(addr)
            self.open.add(sniffer)
            lost = sniffer.connectionLost
            received = sniffer.dataReceived

            def on_data(data):
                received(data)
                self.peak_buffer = max(self.peak_buffer, _buffered(sniffer.inner))

            def on_lost(reason):
                self.open.discard(sniffer)
                lost(reason)

            sniffer.dataReceived = on_data
            sniffer.connectionLost = on_lost
            return sniffer

        self.factory.buildProtocol = tracked

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.svc.stopService()
        yield self.upstream.stopListening()
        yield deferLater(reactor, 0, lambda: None)

    # -- helpers

    @defer.inlineCallbacks
    def connect(self):
        client = RawClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        client.closed.addTimeout(GUARD, reactor)
        return client

    @defer.inlineCallbacks
    def send(self, payload: bytes, *, half_close: bool = False) -> Any:
        """Send ``payload`` on a new connection; return what came back before
        the server closed it."""
        client = yield self.connect()
        client.transport.write(payload)
        if half_close:
            client.transport.loseWriteConnection()
        reply = yield client.closed
        return reply

    @defer.inlineCallbacks
    def normal_request(self):
        reply = yield self.send(b"GET /ok HTTP/1.1\r\nHost: " + HOST +
                                b"\r\nConnection: close\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:200])
        self.assertTrue(reply.endswith(b"hello"), reply[-200:])

    def assert_rejected(self, reply: bytes, *codes: bytes) -> None:
        """A clear 4xx (one of ``codes`` when given) or a bare close."""
        if reply:
            status = reply.split(b"\r\n", 1)[0]
            self.assertTrue(status.startswith(b"HTTP/1.1 4"), status)
            if codes:
                self.assertIn(status.split(b" ")[1], codes)

    @defer.inlineCallbacks
    def assert_all_closed_and_bounded(self):
        # the server side of every connection is gone (the client saw the
        # close; give the server's connectionLost one reactor turn)
        for _ in range(50):
            if not self.open:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.open, set())
        self.assertLessEqual(self.peak_buffer, BUFFER_BOUND)

    # -- cases

    @defer.inlineCallbacks
    def test_malformed_request_lines_get_400_or_close(self):
        cases = [
            b"GARBAGE\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET / HTTP/1.1 extra words\r\nHost: app.example\r\n\r\n",
            b"\x00\x01\x02\x03 / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: app.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: app.example\r\nContent-Length: abc\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\n"
            b"Content-Length: 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nnot hex\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: gzip, chunked\r\n"
            b"Content-Length: 5\r\n\r\nhello",
        ]
        for payload in cases:
            reply = yield self.send(payload, half_close=True)
            self.assert_rejected(reply, b"400", b"404", b"405", b"505")
        yield self.assert_all_closed_and_bounded()
        yield self.normal_request()

    @defer.inlineCallbacks
    def test_header_flood_is_refused_while_others_are_served(self):
        flood = yield self.connect()
        flood.transport.write(b"GET / HTTP/1.1\r\nHost: app.example\r\n")
        # twenty thousand small headers (~250 KB), written in slices
        for i in range(0, 20000, 250):
            flood.transport.write(b"".join(b"X-F%d: v\r\n" % j for j in range(i, i + 250)))
        yield self.normal_request()  # another client is served meanwhile
        reply = yield flood.closed
        self.assert_rejected(reply, b"400", b"431")
        yield self.assert_all_closed_and_bounded()

    @defer.inlineCallbacks
    def test_oversized_single_header_is_refused(self):
        for size in (64 * 1024, 1024 * 1024):
            payload = (b"GET / HTTP/1.1\r\nHost: app.example\r\nX-Big: " + b"a" * size +
                       b"\r\n\r\n")
            reply = yield self.send(payload)
            self.assert_rejected(reply, b"400", b"431")
        # a request line alone far past any sane length: same outcome
        reply = yield self.send(b"GET /" + b"p" * (256 * 1024) + b" HTTP/1.1\r\n\r\n")
        self.assert_rejected(reply, b"400", b"414")
        yield self.assert_all_closed_and_bounded()
        yield self.normal_request()

    @defer.inlineCallbacks
    def cut_at_the_header_deadline(self, clients: int, trickle: Callable[[int], bytes]):
        """*clients* connections send a head's start, then one byte
        (``trickle(n)``, the n-th) at a time each, never finishing it; a
        normal client is served meanwhile; each slow one gets a 408 at the
        header deadline, then every connection is closed."""
        # short real read-header deadline for this listener (the
        # header_timeout knob; 10 s in production on the public listener)
        self.site.header_timeout = 0.5
        slow = []
        for _ in range(clients):
            client = yield self.connect()
            client.transport.write(b"GET / HTTP/1.1\r\nHost: app.example\r\n")
            slow.append(client)
        trickled = 0
        while not all(c.closed.called for c in slow):
            for c in slow:
                if not c.closed.called:
                    c.transport.write(trickle(trickled))
            trickled += 1
            if trickled == 3:
                # while they hang on, a normal client is served
                yield self.normal_request()
            yield deferLater(reactor, 0.05, lambda: None)
            self.assertLess(trickled, GUARD * 20, "slow clients never cut off")
        for c in slow:
            reply = yield c.closed
            self.assert_rejected(reply, b"408")
            self.assertTrue(reply.startswith(b"HTTP/1.1 408"), reply[:100])
        yield self.assert_all_closed_and_bounded()
        yield self.normal_request()

    def test_slowloris_clients_are_cut_at_the_header_deadline(self):
        return self.cut_at_the_header_deadline(
            20, lambda n: b"X-Slow: 1\r\n"[n % 11:n % 11 + 1])

    @defer.inlineCallbacks
    def test_silent_client_is_dropped_by_the_tls_or_plain_peek(self):
        self.factory.peek_timeout = 0.3
        before = self.factory.peek_timeouts
        silent = yield self.connect()
        yield self.normal_request()
        reply = yield silent.closed
        self.assertEqual(reply, b"")
        self.assertEqual(self.factory.peek_timeouts, before + 1)
        yield self.assert_all_closed_and_bounded()

    @defer.inlineCallbacks
    def test_garbage_tls_client_hello_is_closed(self):
        cases = [
            # a handshake record header with a nonsense body
            b"\x16\x03\x01\x00\x40" + b"\xff" * 64,
            # a record claiming 16 KiB, then random bytes, then more records
            b"\x16\x03\x03\x40\x00" + bytes(range(256)) * 64 + b"\x16\x03\x01\x00\x01\x00",
            # a well-framed ClientHello whose inner length is a lie
            b"\x16\x03\x01\x00\x2f\x01\x00\xff\xff\x03\x03" + b"\x00" * 32 + b"\x00\x00\x02",
        ]
        for payload in cases:
            reply = yield self.send(payload, half_close=True)
            # a TLS alert record or nothing, never an HTTP answer in plain text
            self.assertFalse(reply.startswith(b"HTTP/"), reply[:50])
            if reply:
                self.assertEqual(reply[0], 0x15, reply[:20])  # alert
        self.assertGreaterEqual(self.factory.tls_connections, len(cases))
        yield self.assert_all_closed_and_bounded()
        yield self.normal_request()


class HeaderDeadlineClockTests(unittest.TestCase):
    """The read-header deadline on a bare ``ProxySite`` with ``task.Clock``:
    a head trickled byte by byte is cut at ``header_timeout`` even though
    every byte would reset an idle timer."""

    def make(self, header_timeout=10.0, idle=90.0):
        clock = Clock()
        site = ProxySite(Hello(), reactor=clock, timeout=idle, header_timeout=header_timeout)
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        return clock, channel, transport

    def test_trickled_head_gets_408_at_the_deadline(self):
        clock, channel, transport = self.make()
        head = b"GET / HTTP/1.1\r\nHost: app.example\r\nX-Slow: " + b"s" * 200
        for i, byte in enumerate(head):  # noqa: B007 (i read after the loop)
            channel.dataReceived(bytes([byte]))
            clock.advance(0.1)
            if transport.disconnecting:
                break
        # 10 s at 0.1 s per byte: cut after ~100 bytes, long before the head ends
        self.assertTrue(transport.disconnecting)
        self.assertLess(i, len(head) - 1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())
        self.assertEqual(channel.header_timeouts, 1)

    def test_complete_head_before_the_deadline_is_served(self):
        clock, channel, transport = self.make()
        for byte in b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n":
            channel.dataReceived(bytes([byte]))
            clock.advance(0.1)
        clock.advance(60)  # well past the head deadline: it was cancelled
        self.assertIn(b"200 OK", transport.value())
        self.assertTrue(transport.value().endswith(b"hello"))
        self.assertEqual(channel.header_timeouts, 0)


class BadInputOverTunnelTests(unittest.TestCase):
    """The same abuse on an account's *inbound* listener: a client WireGuard
    device + netstack talks over real UDP on loopback to the gateway's shared
    WireGuard port (the wiring of ``tests/test_service.py``, whose setUp is
    reused); raw TCP connections through the client netstack to port 80."""

    def setUp(self):
        from tests.test_service import GatewayServiceTests

        self._svc_tests = GatewayServiceTests
        d = GatewayServiceTests.setUp(self)
        d.addCallback(lambda _: self._track())
        return d

    def tearDown(self):
        return self._svc_tests.tearDown(self)

    def _track(self):
        from tests.test_service import CLIENT_IP

        self.mgmt.allow_tunnel_peer(CLIENT_IP, "app.example")
        runtime = self.svc.accounts.get("acct")
        listener = next(p for p in runtime.listeners if getattr(p, "port", None) == 80)
        factory = listener.factory
        if hasattr(factory, "built"):  # the web factory is built on the first connection
            if factory.built is None:
                from twisted.internet.address import IPv4Address

                factory.buildProtocol(IPv4Address("TCP", CLIENT_IP, 40000))
            factory = factory.built
        self.factory = factory
        self.site = self.factory.plain_factory
        self.open: set[Any] = set()
        self.peak_buffer = 0
        BadInputTests._install_tracking(self)

    @defer.inlineCallbacks
    def connect(self):
        from nbgateway.netstack.endpoints import TunnelClientEndpoint
        from tests.test_service import GATEWAY_IP

        client = RawClient()
        yield connectProtocol(TunnelClientEndpoint(self.client_stack, GATEWAY_IP, 80, timeout=5),
                              client)
        client.closed.addTimeout(GUARD, reactor)
        return client

    @defer.inlineCallbacks
    def normal_request(self):
        resp, _body = yield self._svc_tests.get(self)
        self.assertEqual(resp.code, 200)

    assert_rejected = BadInputTests.assert_rejected
    assert_all_closed_and_bounded = BadInputTests.assert_all_closed_and_bounded

    @defer.inlineCallbacks
    def test_header_flood_and_oversized_header_through_the_tunnel(self):
        flood = yield self.connect()
        flood.transport.write(b"GET / HTTP/1.1\r\nHost: app.example\r\n")
        for i in range(0, 20000, 250):
            flood.transport.write(b"".join(b"X-F%d: v\r\n" % j for j in range(i, i + 250)))
        big = yield self.connect()
        big.transport.write(b"GET / HTTP/1.1\r\nHost: app.example\r\nX-Big: " +
                            b"a" * (256 * 1024) + b"\r\n\r\n")
        yield self.normal_request()  # the peer's other connection is served meanwhile
        for client in (flood, big):
            reply = yield client.closed
            self.assert_rejected(reply, b"400", b"431")
        yield self.assert_all_closed_and_bounded()
        yield self.normal_request()

    cut_at_the_header_deadline = BadInputTests.cut_at_the_header_deadline

    def test_slowloris_through_the_tunnel(self):
        return self.cut_at_the_header_deadline(10, lambda n: b"X")
