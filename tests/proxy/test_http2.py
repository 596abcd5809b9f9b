"""HTTP/2 on the TLS listener: ALPN ``h2`` hands the connection to Twisted's
H2 support; requests go through the same resources (identity stamped,
spoofed identity headers removed, bodies streamed both ways) as HTTP/1.1.
curl ``--http2`` with the local CA on a real 127.0.0.1 port."""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.trial import unittest

from nbgateway.routes.identity import Identity
from nbgateway.routes.service import TargetOptions
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import server_tls_factory

from ._harness import EchoUpstream, ProxyHarness, curl, listen_site

DIRECT = TargetOptions(direct_upstream=True)


class HTTP2ProxyTests(unittest.TestCase):
    def setUp(self) -> None:
        tmp = self.mktemp()
        self.store = CertificateStore(None, None, tmp + "/data")
        self.store.reload()
        self.upstream = EchoUpstream()
        self.up_port, self.up_site = listen_site(self.upstream)
        self.addCleanup(self.up_port.stopListening)
        self.h = ProxyHarness()
        self.port = reactor.listenTCP(0, server_tls_factory(self.store, self.h.site),
                                      interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.h.close)
        self.h.add("app.example", {"/": f"http://127.0.0.1:{self.up_port.getHost().port}/"},
                   opts=DIRECT)

    def https(self, path: str, *extra: str):
        port = self.port.getHost().port
        return curl("--cacert", self.store.ca.cert_path,
                    "--resolve", f"app.example:{port}:127.0.0.1", *extra,
                    f"https://app.example:{port}{path}")

    @defer.inlineCallbacks
    def test_browser_style_request_over_h2_with_identity_stamped(self):
        self.h.identity = Identity("u1", "alice@x", ("g1",), ("eng",), "oidc")
        status, head, body = yield self.https(
            "/hello?x=1", "--http2", "-H", "Accept: text/html,application/xhtml+xml",
            "-H", "Accept-Language: en-US,en;q=0.9", "-H", "User-Agent: Mozilla/5.0",
            "-H", "X-NetBird-User: mallory", "-H", "Cookie: a=1; nb_session=T")
        self.assertEqual(status, 200)
        self.assertTrue(head.startswith("HTTP/2 200"), head)
        seen = json.loads(body)
        hd = seen["headers"]
        self.assertEqual(seen["uri"], "/hello?x=1")
        self.assertEqual(hd["x-netbird-user"], ["alice@x"])
        self.assertEqual(hd["x-netbird-groups"], ["eng"])
        self.assertEqual(hd["x-forwarded-proto"], ["https"])
        port = self.port.getHost().port
        self.assertEqual(hd["x-forwarded-host"], [f"app.example:{port}"])  # :authority
        self.assertEqual(hd["cookie"], ["a=1"])
        self.assertEqual(hd["user-agent"], ["Mozilla/5.0"])
        self.assertIn("x-upstream: yes", head.lower())
        # the request object the resources saw is an HTTP/2 one
        self.assertEqual(self.h.requests[-1].clientproto, b"HTTP/2")

    @defer.inlineCallbacks
    def test_many_streams_on_one_connection(self):
        port = self.port.getHost().port
        urls = [f"https://app.example:{port}/n{i}" for i in range(6)]
        _status, head, _body = yield curl(
            "--cacert", self.store.ca.cert_path, "--http2",
            "--resolve", f"app.example:{port}:127.0.0.1", *urls)
        self.assertEqual(head.count("HTTP/2 200"), 6, head)
        self.assertEqual(len(self.h.site.channels), 1)  # one TLS connection
        self.assertEqual(sorted(s["uri"] for s in self.upstream.seen[-6:]),
                         [f"/n{i}" for i in range(6)])

    @defer.inlineCallbacks
    def test_large_body_streamed_up_and_chunked_response_down(self):
        body = b"z" * (300 * 1024)  # above the streaming threshold
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        status, head, out = yield self.https("/upload", "--http2", "--data-binary", f"@{path}")
        self.assertEqual(status, 200)
        self.assertTrue(head.startswith("HTTP/2 200"), head)
        self.assertEqual(json.loads(out)["body_len"], len(body))
        self.assertIsNotNone(self.h.requests[-1].body_stream)  # it was streamed
        status, head, out = yield self.https("/chunked", "--http2")
        self.assertEqual((status, out), (200, b"part-one,part-two"))
        self.assertNotIn("transfer-encoding", head.lower())

    @defer.inlineCallbacks
    def test_http11_clients_stay_on_http11(self):
        status, head, _ = yield self.https("/", "--http1.1")
        self.assertEqual(status, 200)
        self.assertTrue(head.startswith("HTTP/1.1 200"), head)
        self.assertEqual(self.h.requests[-1].clientproto, b"HTTP/1.1")
