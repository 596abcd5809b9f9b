"""TLS on both sides of the proxy: an inbound TLS listener (SNI certificate
from the store, curl trusting the local CA) and https upstreams verified with
service_identity, or not when skip_tls_verify is set."""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.trial import unittest

from nbgateway.dial.pool import UpstreamPools
from nbgateway.routes.service import TargetOptions
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import ClientTLSPolicy, server_tls_factory

from ._harness import (
    EchoUpstream,
    ProxyHarness,
    RecordingSite,
    curl,
    listen_protocol,
    wait_for,
)
from .test_upgrade import WsClient, WsEcho, accept_for, frame


class TLSProxyTests(unittest.TestCase):
    def setUp(self) -> None:
        tmp = self.mktemp()
        self.store = CertificateStore(None, None, tmp + "/data")
        self.store.reload()
        with open(self.store.ca.cert_path, "rb") as f:
            self.ca_pem = f.read()
        # https upstream presenting a local-CA certificate for "localhost"
        self.upstream = EchoUpstream()
        up_factory = server_tls_factory(self.store, RecordingSite(self.upstream))
        self.up_port = reactor.listenTCP(0, up_factory, interface="127.0.0.1")
        self.addCleanup(self.up_port.stopListening)
        self.h = ProxyHarness()
        self.h.pools = UpstreamPools(reactor, tls_creator=ClientTLSPolicy(self.ca_pem))
        self.h.proxy.pools = self.h.pools
        self.port = reactor.listenTCP(0, server_tls_factory(self.store, self.h.site),
                                      interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.h.close)

    def https(self, host: str, path: str = "/", *extra: str):
        port = self.port.getHost().port
        return curl("--cacert", self.store.ca.cert_path,
                    "--resolve", f"{host}:{port}:127.0.0.1", *extra,
                    f"https://{host}:{port}{path}")

    @defer.inlineCallbacks
    def test_inbound_tls_and_verified_https_upstream(self):
        up = self.up_port.getHost().port
        self.h.add("app.example", {"/": f"https://localhost:{up}/"},
                   opts=TargetOptions(direct_upstream=True))
        status, _, body = yield self.https("app.example", "/x")
        self.assertEqual(status, 200)
        hd = json.loads(body)["headers"]
        self.assertEqual(hd["x-forwarded-proto"], ["https"])
        self.assertEqual(hd["x-forwarded-port"], [str(self.port.getHost().port)])
        self.assertEqual(hd["host"], [f"localhost:{up}"])

    @defer.inlineCallbacks
    def test_untrusted_upstream_certificate_is_502(self):
        self.h.pools = UpstreamPools(reactor, tls_creator=ClientTLSPolicy())  # platform trust
        self.h.proxy.pools = self.h.pools
        up = self.up_port.getHost().port
        self.h.add("app.example", {"/": f"https://localhost:{up}/"},
                   opts=TargetOptions(direct_upstream=True))
        status, _, body = yield self.https("app.example")
        self.assertEqual(status, 502)
        self.assertIn(b"Connection Error", body)
        self.assertEqual(self.upstream.seen, [])
        # skip_tls_verify uses the insecure transport and succeeds
        self.h.add("skip.example", {"/": f"https://localhost:{up}/"},
                   opts=TargetOptions(direct_upstream=True, skip_tls_verify=True))
        status, _, _ = yield self.https("skip.example")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_hostname_mismatch_is_502(self):
        up = self.up_port.getHost().port
        # the upstream presents a certificate for 127.0.0.1's SNI-less default
        # ("localhost"), but the target names 127.0.0.1
        self.h.add("ip.example", {"/": f"https://127.0.0.1:{up}/"},
                   opts=TargetOptions(direct_upstream=True))
        status, _, _ = yield self.https("ip.example")
        self.assertEqual(status, 502)

    @defer.inlineCallbacks
    def test_websocket_over_inbound_tls(self):
        WsEcho.instances = []
        ws = listen_protocol(WsEcho)
        self.addCleanup(ws.stopListening)
        self.h.add("ws.example", {"/": f"http://127.0.0.1:{ws.getHost().port}/"})
        trust = trustRootFromCertificates([Certificate.loadPEM(self.ca_pem)])
        ep = wrapClientTLS(optionsForClientTLS("ws.example", trustRoot=trust),
                           TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port))
        client = WsClient("ws.example")
        yield connectProtocol(ep, client)
        yield wait_for(lambda: client.head is not None)
        self.assertTrue(client.head.startswith(b"HTTP/1.1 101"), client.head)
        self.assertIn(accept_for(client.key).lower(), client.head.lower())
        client.transport.write(frame(1, b"over tls", mask=True))
        yield wait_for(lambda: client.frames)
        self.assertEqual(client.frames[0], (1, b"over tls"))
        self.assertEqual(WsEcho.instances[0].headers[b"x-forwarded-proto"], b"https")
        client.transport.loseConnection()
        yield client.closed

    @defer.inlineCallbacks
    def test_websocket_to_https_upstream(self):
        WsEcho.instances = []
        from twisted.internet.protocol import Factory

        ws = reactor.listenTCP(0, server_tls_factory(self.store, Factory.forProtocol(WsEcho)),
                               interface="127.0.0.1")
        self.addCleanup(ws.stopListening)
        self.h.add("wss.example", {"/": f"https://localhost:{ws.getHost().port}/"},
                   opts=TargetOptions(direct_upstream=True))
        client = WsClient("wss.example")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.h.listen()), client)
        yield wait_for(lambda: client.head is not None)
        self.assertTrue(client.head.startswith(b"HTTP/1.1 101"), client.head)
        payload = b"y" * 300_000
        client.transport.write(frame(2, payload, mask=True))
        yield wait_for(lambda: client.frames)
        self.assertEqual(client.frames[0], (2, payload))
        client.transport.loseConnection()
        yield client.closed
