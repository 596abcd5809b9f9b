"""Direct and tunnel dialers, and the per-account pools."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from twisted.web.client import URI, readBody
from twisted.web.http_headers import Headers

from nbgateway.dial import IUpstreamDialer, ProxyNotConnectedError
from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.dial.tunnel import TunnelDialer


class Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hi")
        self.transport.loseConnection()


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.done.callback(self.data)


class DialerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.port = reactor.listenTCP(0, Factory.forProtocol(Hello), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def test_direct_dialer_uses_host_network_and_names(self):
        dialer = DirectDialer(reactor)
        self.assertTrue(IUpstreamDialer.providedBy(dialer))
        ep = dialer.endpoint("localhost", self.port.getHost().port, 5)
        self.assertIsInstance(ep, HostnameEndpoint)
        proto = Collect()
        yield ep.connect(Factory.forProtocol(lambda: proto))
        self.assertEqual((yield proto.done), b"hi")

    @defer.inlineCallbacks
    def test_tunnel_dialer_attach_detach(self):
        calls = []

        def factory(host, port, timeout):
            calls.append((host, port, timeout))
            return HostnameEndpoint(reactor, "127.0.0.1", port, timeout=timeout)

        dialer = TunnelDialer()
        self.assertFalse(dialer.connected)
        with self.assertRaises(ProxyNotConnectedError):
            dialer.endpoint("100.64.0.9", 80, 3)
        dialer.attach(factory)
        proto = Collect()
        yield dialer.endpoint("[100.64.0.9]", self.port.getHost().port, 3).connect(
            Factory.forProtocol(lambda: proto))
        self.assertEqual((yield proto.done), b"hi")
        self.assertEqual(calls, [("100.64.0.9", self.port.getHost().port, 3)])
        dialer.detach()
        with self.assertRaises(ProxyNotConnectedError):
            dialer.endpoint("100.64.0.9", 80, 3)

    def test_pools_are_per_account_mode_and_verification(self):
        pools = UpstreamPools(reactor, max_idle_per_host=7, idle_timeout=11)
        a = pools.pool("A", False, False)
        self.assertIs(pools.pool("A", False, False), a)
        self.assertIsNot(pools.pool("A", True, False), a)
        self.assertIsNot(pools.pool("A", False, True), a)
        self.assertIsNot(pools.pool("B", False, False), a)
        self.assertEqual((a.maxPersistentPerHost, a.cachedConnectionTimeout), (7, 11))
        self.addCleanup(pools.close)

    def test_https_without_tls_policy_refuses(self):
        pools = UpstreamPools(reactor)
        factory = pools.endpoint_factory(DirectDialer(reactor), timeout=1, skip_verify=False)
        with self.assertRaises(ValueError):
            factory.endpointForURI(URI.fromBytes(b"https://localhost:1/"))

    @defer.inlineCallbacks
    def test_close_account_drops_idle_connections(self):
        from twisted.web import resource, server

        class R(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                return b"ok"

        site_port = reactor.listenTCP(0, server.Site(R()), interface="127.0.0.1")
        self.addCleanup(site_port.stopListening)
        pools = UpstreamPools(reactor)
        agent = pools.agent("A", DirectDialer(reactor), direct=True, skip_verify=False,
                            timeout=5)
        url = b"http://127.0.0.1:%d/" % site_port.getHost().port
        resp = yield agent.request(b"GET", url, Headers())
        self.assertEqual((yield readBody(resp)), b"ok")
        yield wait_idle(pools)
        self.assertEqual(pools.idle_connections("A"), 1)
        self.assertEqual(pools.idle_connections("B"), 0)
        yield pools.close_account("A")
        self.assertEqual(pools.idle_connections(), 0)


@defer.inlineCallbacks
def wait_idle(pools):
    from twisted.internet import task

    for _ in range(200):
        if pools.idle_connections():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
