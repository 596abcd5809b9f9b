"""TLS and plain HTTP on the same port, peek timeout."""

from __future__ import annotations

from twisted.internet import defer, reactor, utils
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest
from twisted.web import resource, server

from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import SNIServerCreator
from nbgateway.tls.dispatch import TLSOrPlainFactory


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"tls" if request.isSecure() else b"plain"


class Silent(Protocol):
    def __init__(self) -> None:
        self.closed = defer.Deferred()

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)


class DispatchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = CertificateStore(None, None, self.mktemp())
        self.factory = TLSOrPlainFactory(SNIServerCreator(self.store), server.Site(Hello()),
                                         peek_timeout=0.2)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def curl(self, url: str):
        p = self.port.getHost().port
        out, err, code = yield utils.getProcessOutputAndValue("curl", [
            "-sS", "--max-time", "20", "--cacert", self.store.ca.cert_path,
            "--resolve", f"svc.example:{p}:127.0.0.1", url.format(p=p)], env={})
        self.assertEqual(code, 0, err)
        return out

    @defer.inlineCallbacks
    def test_tls_and_plain_on_one_port_b54(self):
        self.assertEqual((yield self.curl("https://svc.example:{p}/")), b"tls")
        self.assertEqual((yield self.curl("http://svc.example:{p}/")), b"plain")
        self.assertEqual((self.factory.tls_connections, self.factory.plain_connections), (1, 1))

    @defer.inlineCallbacks
    def test_silent_client_is_dropped_without_blocking_others(self):
        silent = Silent()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1",
                                                 self.port.getHost().port), silent)
        # another client is served while the silent one is still waiting
        self.assertEqual((yield self.curl("http://svc.example:{p}/")), b"plain")
        yield silent.closed
        self.assertEqual(self.factory.peek_timeouts, 1)
