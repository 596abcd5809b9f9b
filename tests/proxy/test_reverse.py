"""Reverse proxy over real 127.0.0.1 sockets, curl as the client."""

from __future__ import annotations

import json
from urllib.parse import quote

from twisted.internet import defer
from twisted.trial import unittest

from nbgateway.dial.tunnel import TunnelDialer
from nbgateway.routes.identity import Identity
from nbgateway.routes.paths import PATH_REWRITE_PRESERVE
from nbgateway.routes.service import TargetOptions

from ._harness import EchoUpstream, ProxyHarness, SilentProtocol, curl, listen_protocol, listen_site


class ReverseProxyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.upstream = EchoUpstream()
        self.up_port, self.up_site = listen_site(self.upstream)
        self.addCleanup(self.up_port.stopListening)
        self.up = f"http://127.0.0.1:{self.up_port.getHost().port}"
        self.h = ProxyHarness()
        self.port = self.h.listen()
        self.addCleanup(self.h.close)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, host: str, path: str = "/", *extra: str):
        return curl("-H", f"Host: {host}", *extra, self.url(path))

    @defer.inlineCallbacks
    def test_forwarding_and_identity_headers_b53(self):
        self.h.add("app.example", {"/": self.up + "/"})
        self.h.identity = Identity("u1", "alice@x", ("g1", "g2"), ("eng", "ops"), "oidc")
        status, head, body = yield self.get(
            "app.example", "/hello?x=1&session_token=T",
            "-H", "X-NetBird-User: mallory", "-H", "X-NetBird-Groups: admins",
            "-H", "X-Forwarded-For: 6.6.6.6", "-H", "Cookie: a=1; nb_session=T")
        self.assertEqual(status, 200)
        seen = json.loads(body)
        hd = seen["headers"]
        self.assertEqual(seen["uri"], "/hello?x=1")
        self.assertEqual(hd["x-netbird-user"], ["alice@x"])
        self.assertEqual(hd["x-netbird-groups"], ["eng,ops"])
        self.assertEqual(hd["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(hd["x-forwarded-proto"], ["http"])
        self.assertEqual(hd["x-forwarded-host"], ["app.example"])
        self.assertEqual(hd["x-forwarded-port"], ["80"])
        self.assertEqual(hd["cookie"], ["a=1"])
        self.assertEqual(hd["host"], [f"127.0.0.1:{self.up_port.getHost().port}"])
        self.assertIn("x-upstream: yes", head.lower())

    @defer.inlineCallbacks
    def test_request_context_records_route_and_upstream_start(self):
        svc = self.h.add("app.example", {"/api": self.up + "/", "/": self.up + "/root"})
        status, _, _ = yield self.get("app.example", "/api/x")
        self.assertEqual(status, 200)
        ctx = self.h.contexts[-1]
        self.assertIs(ctx.service, svc)
        self.assertEqual(ctx.route.path, "/api")
        self.assertIsNotNone(ctx.upstream_started)
        # state travels in the context, never as attributes on the request
        self.assertEqual([a for a in vars(self.h.requests[-1]) if a.startswith("nbgw")], [])
        status, _, _ = yield self.get("nope.example", "/")
        self.assertEqual(status, 404)
        self.assertIsNone(self.h.contexts[-1].route)

    @defer.inlineCallbacks
    def test_spoofed_identity_removed_without_identity(self):
        self.h.add("app.example", {"/": self.up + "/"})
        status, _, body = yield self.get("app.example", "/", "-H", "X-NetBird-User: mallory")
        self.assertEqual(status, 200)
        self.assertNotIn("x-netbird-user", json.loads(body)["headers"])

    @defer.inlineCallbacks
    def test_pass_host_header_b59(self):
        self.h.add("app.example", {"/": self.up + "/"}, pass_host_header=True)
        _, _, body = yield self.get("app.example:8443")
        self.assertEqual(json.loads(body)["headers"]["host"], ["app.example:8443"])

    @defer.inlineCallbacks
    def test_path_rewrite_default_and_preserve_b58(self):
        self.h.add("a.example", {"/api": self.up + "/", "/": self.up + "/root"})
        _, _, body = yield self.get("a.example", "/api/users?q=1")
        self.assertEqual(json.loads(body)["uri"], "/users?q=1")
        _, _, body = yield self.get("a.example", "/other")
        self.assertEqual(json.loads(body)["uri"], "/root/other")
        self.h.add("p.example", {"/api": self.up + "/"},
                   opts=TargetOptions(path_rewrite=PATH_REWRITE_PRESERVE))
        _, _, body = yield self.get("p.example", "/api/users?q=1")
        self.assertEqual(json.loads(body)["uri"], "/api/users?q=1")

    @defer.inlineCallbacks
    def test_unknown_host_and_unrouted_path_are_404(self):
        self.h.add("a.example", {"/api": self.up + "/"})
        status, _, body = yield self.get("nobody.example")
        self.assertEqual(status, 404)
        self.assertIn(b"Service Not Found", body)
        status, _, body = yield self.get("a.example", "/apiv2")
        self.assertEqual(status, 404)
        self.assertEqual(self.upstream.seen, [])

    @defer.inlineCallbacks
    def test_self_loop_421_only_for_overlay_b52(self):
        self.h.add("loop.example", {"/": self.up + "/"})
        self.h.overlay = True
        status, _, body = yield self.get("loop.example")
        self.assertEqual(status, 421)
        self.assertIn(b"Loop Detected", body)
        self.assertEqual(self.upstream.seen, [])
        self.h.overlay = False
        status, _, _ = yield self.get("loop.example")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_hostname_target_never_flagged_as_loop(self):
        self.h.add("n.example", {"/": f"http://localhost:{self.up_port.getHost().port}/"},
                   opts=TargetOptions(direct_upstream=True))
        self.h.overlay = True
        status, _, _ = yield self.get("n.example")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_refused_port_is_502_service_unavailable(self):
        closed = listen_protocol(SilentProtocol)
        port = closed.getHost().port
        yield closed.stopListening()
        self.h.add("r.example", {"/": f"http://127.0.0.1:{port}/"})
        status, _, body = yield self.get("r.example")
        self.assertEqual(status, 502)
        self.assertIn(b"Service Unavailable", body)

    @defer.inlineCallbacks
    def test_unresponsive_upstream_is_504_b61(self):
        silent = listen_protocol(SilentProtocol)
        self.addCleanup(silent.stopListening)
        self.h.add("s.example", {"/": f"http://127.0.0.1:{silent.getHost().port}/"},
                   opts=TargetOptions(request_timeout=0.3))
        status, _, body = yield self.get("s.example")
        self.assertEqual(status, 504)
        self.assertIn(b"Request Timeout", body)

    @defer.inlineCallbacks
    def test_max_dial_timeout_caps_request_timeout_b61(self):
        self.h.proxy.max_dial_timeout = 0.2
        self.assertEqual(self.h.proxy.timeout_for(TargetOptions(request_timeout=5)), 0.2)
        self.assertEqual(self.h.proxy.timeout_for(TargetOptions()), 0.2)
        silent = listen_protocol(SilentProtocol)
        self.addCleanup(silent.stopListening)
        self.h.add("s.example", {"/": f"http://127.0.0.1:{silent.getHost().port}/"},
                   opts=TargetOptions(request_timeout=60))
        status, _, _ = yield self.get("s.example")
        self.assertEqual(status, 504)

    @defer.inlineCallbacks
    def test_no_embedded_client_is_502_proxy_not_connected_b60_b62(self):
        self.h.tunnel = TunnelDialer()  # nothing attached
        self.h.add("t.example", {"/": self.up + "/"})
        status, _, body = yield self.get("t.example")
        self.assertEqual(status, 502)
        self.assertIn(b"Proxy Not Connected", body)
        # direct_upstream does not need the tunnel
        self.h.add("d.example", {"/": self.up + "/"}, opts=TargetOptions(direct_upstream=True))
        status, _, _ = yield self.get("d.example")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_rewrite_redirects(self):
        port = self.up_port.getHost().port
        self.h.add("r.example", {"/app": self.up + "/"}, rewrite_redirects=True)
        loc = f"http://127.0.0.1:{port}/login?next=%2Fx"
        status, head, _ = yield self.get("r.example", f"/app/redirect?to={quote(loc, safe='')}")
        self.assertEqual(status, 302)
        self.assertIn("location: http://r.example/app/login?next=%2fx", head.lower())
        other = "http://elsewhere.example/x"
        _, head, _ = yield self.get("r.example", f"/app/redirect?to={other}")
        self.assertIn(f"location: {other}", head.lower())
        self.h.add("n.example", {"/app": self.up + "/"})
        _, head, _ = yield self.get("n.example", f"/app/redirect?to={quote(loc, safe='')}")
        self.assertIn(f"location: {loc.lower()}", head.lower())

    @defer.inlineCallbacks
    def test_unparseable_location_is_502(self):
        self.h.add("r.example", {"/": self.up + "/"}, rewrite_redirects=True)
        status, _, _ = yield self.get("r.example", "/redirect?to=http://h:notaport/")
        self.assertEqual(status, 502)

    @defer.inlineCallbacks
    def test_head_204_304(self):
        self.h.add("h.example", {"/": self.up + "/"})
        status, head, body = yield self.get("h.example", "/", "-I")
        self.assertEqual(status, 200)
        self.assertIn("content-length:", head.lower())
        self.assertNotIn(b'"method"', body)  # -I prints only the head
        status, _, body = yield self.get("h.example", "/nocontent")
        self.assertEqual((status, body), (204, b""))
        status, _, body = yield self.get("h.example", "/notmodified")
        self.assertEqual((status, body), (304, b""))
        # the same keep-alive connection stays usable after bodiless responses
        status, _, body = yield curl(
            "-H", "Host: h.example", self.url("/nocontent"), "-I", self.url("/"),
            "-X", "GET", self.url("/x"))
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_chunked_both_ways(self):
        self.h.add("c.example", {"/": self.up + "/"})
        status, head, body = yield self.get("c.example", "/chunked")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"part-one,part-two")
        self.assertIn("transfer-encoding: chunked", head.lower())
        payload = b"z" * 200_000
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(payload)
        status, _, body = yield curl(
            "-H", "Host: c.example", "-H", "Transfer-Encoding: chunked",
            "--data-binary", "@" + path, self.url("/echo"))
        self.assertEqual(status, 200)
        seen = json.loads(body)
        self.assertEqual(seen["body_len"], len(payload))
        self.assertEqual(seen["method"], "POST")

    @defer.inlineCallbacks
    def test_small_post_body_and_cookie_merge(self):
        self.h.add("c.example", {"/": self.up + "/"})
        status, head, body = yield self.get("c.example", "/cookie", "--data-binary", "abc")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["body_len"], 3)
        self.assertIn("set-cookie: up=1; path=/", head.lower())

    @defer.inlineCallbacks
    def test_upstream_connections_are_reused(self):
        self.h.add("k.example", {"/": self.up + "/"})
        for _ in range(4):
            status, _, _ = yield self.get("k.example")
            self.assertEqual(status, 200)
        self.assertEqual(self.up_site.connections, 1)
        self.assertEqual(len({s["client_port"] for s in self.upstream.seen}), 1)
        self.assertEqual(self.h.pools.idle_connections("acc1"), 1)

    @defer.inlineCallbacks
    def test_accounts_do_not_share_connections(self):
        self.h.add("a.example", {"/": self.up + "/"}, account_id="A")
        self.h.add("b.example", {"/": self.up + "/"}, account_id="B")
        yield self.get("a.example")
        yield self.get("b.example")
        yield self.get("a.example")
        self.assertEqual(self.up_site.connections, 2)
