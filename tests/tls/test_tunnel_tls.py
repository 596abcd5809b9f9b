"""TLS termination and TLS-or-plain dispatch over the netstack (acceptance
54/55): a listener on a tunnel address presents the store's SNI certificate,
and plain HTTP on the same port still works."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor
from twisted.internet.endpoints import connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.trial import unittest
from twisted.web import resource, server

from nbgateway.netstack.endpoints import TunnelClientEndpoint, TunnelServerEndpoint
from nbgateway.netstack.testing import make_stack_pair
from nbgateway.tls.certstore import CertificateStore, LocalCA
from nbgateway.tls.contexts import SNIServerCreator
from nbgateway.tls.dispatch import TLSOrPlainFactory

from ._certs import write_pair


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"tls" if request.isSecure() else b"plain"


class OneShot(Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.cert = None
        self.closed = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.1\r\nHost: svc.example\r\nConnection: close\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.cert is None and hasattr(self.transport, "getPeerCertificate"):
            self.cert = self.transport.getPeerCertificate()
        self.buf += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)


class TunnelTLSTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        tmp = self.mktemp()
        self.external = LocalCA(tmp + "/ext", "external test CA")
        write_pair(self.external, tmp + "/certs", "svc", "svc.example")
        self.store = CertificateStore(tmp + "/certs", None, tmp + "/data")
        self.gw, self.peer, self.link = make_stack_pair(
            reactor, ("100.64.0.1",), ("100.64.0.2",), latency=0.0, jitter=0.0)
        factory = TLSOrPlainFactory(SNIServerCreator(self.store), server.Site(Hello()),
                                    clock=reactor)
        self.port = yield TunnelServerEndpoint(self.gw, 443, interface="100.64.0.1").listen(
            factory)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.port.stopListening()
        self.gw.close()
        self.peer.close()
        self.link.close()

    def endpoint(self):
        return TunnelClientEndpoint(self.peer, "100.64.0.1", 443, timeout=5)

    @defer.inlineCallbacks
    def test_sni_certificate_over_tunnel_b55(self):
        pem = self.external.cert.public_bytes(serialization.Encoding.PEM)
        trust = trustRootFromCertificates([Certificate.loadPEM(pem)])
        ep = wrapClientTLS(optionsForClientTLS("svc.example", trustRoot=trust), self.endpoint())
        client = OneShot()
        yield connectProtocol(ep, client)
        yield client.closed
        self.assertTrue(client.buf.startswith(b"HTTP/1.1 200"), client.buf[:80])
        self.assertTrue(client.buf.endswith(b"tls"))
        presented = client.cert.to_cryptography()
        self.assertEqual(presented, self.store.certificate_for("svc.example").cert)
        self.assertIsInstance(presented, x509.Certificate)

    @defer.inlineCallbacks
    def test_plain_http_on_the_tls_port_b54(self):
        client = OneShot()
        yield connectProtocol(self.endpoint(), client)
        yield client.closed
        self.assertTrue(client.buf.startswith(b"HTTP/1.1 200"), client.buf[:80])
        self.assertTrue(client.buf.endswith(b"plain"))
