"""The front door of GatewayResource over real loopback sockets (issue 11.3,
11.9): request-target forms, duplicate Host, Host normalisation, the Host
port on tunnel listeners, and header names spelled with ``_``.

Requests are written as raw bytes (Agent cannot send a duplicate Host or an
absolute-form target); the upstream is a real Twisted site echoing what it
received, as a CGI-style upstream would see it."""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest
from twisted.web import resource, server

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.http.site import GatewayResource
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.hosts import domain_key, split_absolute_form
from nbgateway.routes.service import entry_from_mapping
from nbgateway.routes.table import ServiceTable
from nbgateway.store import mappings as store_mappings
from nbgateway.store.mappings import MappingStore


class CgiEcho(resource.Resource):
    """Answers with the request target and the headers as CGI variables
    (``HTTP_X_NETBIRD_USER``): names with ``-`` and ``_`` collapse, values
    of one variable are joined with ``,`` -- the merge an attacker exploits."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def render(self, request):
        env: dict[str, str] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            key = "HTTP_" + name.decode().upper().replace("-", "_")
            joined = ",".join(v.decode() for v in values)
            env[key] = f"{env[key]},{joined}" if key in env else joined
        self.seen.append(env)
        return json.dumps({"uri": request.uri.decode(), "env": env}).encode()


class Collect(Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.data = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.done.callback(self.data)


def mapping(port: int, domain: str, **kw) -> pb.ProxyMapping:
    return pb.ProxyMapping(
        id=f"svc-{domain}", account_id="acct", domain=domain,
        path=[pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/",
                             options=pb.PathTargetOptions(direct_upstream=True))], **kw)


class FrontDoorTests(unittest.TestCase):
    listener_account: str | None = None
    allow_underscore = False

    def setUp(self) -> None:
        self.upstream = CgiEcho()
        self.up_port = reactor.listenTCP(0, server.Site(self.upstream), interface="127.0.0.1")
        self.addCleanup(self.up_port.stopListening)
        self.entries = {"app.example": entry_from_mapping(
            mapping(self.up_port.getHost().port, "app.example"))}
        self.pools = UpstreamPools(reactor)
        self.addCleanup(self.pools.close_account, "acct")
        proxy = ReverseProxy(reactor, self.pools, lambda acct, direct: DirectDialer(reactor))
        self.resource = GatewayResource(
            lookup=self.entries.get, proxy=proxy, gate=None,
            listener_account=self.listener_account,
            allow_underscore_headers=self.allow_underscore)
        self.port = reactor.listenTCP(0, ProxySite(self.resource), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @property
    def gw_port(self) -> int:
        return self.port.getHost().port

    @defer.inlineCallbacks
    def raw(self, head: bytes):
        """Send one request head (Connection: close added); (status, body)."""
        proto = Collect(head.rstrip(b"\r\n") + b"\r\nConnection: close\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.gw_port), proto)
        data = yield proto.done
        status_line, _, rest = data.partition(b"\r\n")
        body = rest.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in rest else b""
        return int(status_line.split()[1]), body


def use_store_fed_table(case: FrontDoorTests) -> ServiceTable:
    """Point the listener at a ServiceTable fed by a MappingStore holding the
    service as ``App.Example.`` (the spelling management might send)."""
    store, table = MappingStore(), ServiceTable()
    store.add_observer(table)
    store.apply_batch([mapping(case.up_port.getHost().port, "App.Example.")], False)
    case.resource.lookup = table.lookup
    return table


class PublicFrontDoorTests(FrontDoorTests):
    @defer.inlineCallbacks
    def test_duplicate_host_is_400_and_never_routed(self):
        code, body = yield self.raw(b"GET / HTTP/1.1\r\nHost: evil.example\r\n"
                                    b"Host: app.example\r\n")
        self.assertEqual(code, 400)
        self.assertIn(b"duplicate Host", body)
        self.assertEqual(self.upstream.seen, [])
        self.assertEqual(self.resource.rejected, {400: 1})

    @defer.inlineCallbacks
    def test_duplicate_host_closes_the_connection(self):
        # no "Connection: close" from the client: the pipelined second request
        # is never answered, the server closes after the 400
        proto = Collect(b"GET / HTTP/1.1\r\nHost: app.example\r\nHost: app.example\r\n\r\n"
                        b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.gw_port), proto)
        data = yield proto.done
        self.assertTrue(data.startswith(b"HTTP/1.1 400"), data[:40])
        self.assertEqual(data.count(b"HTTP/1.1 "), 1)
        self.assertEqual(self.upstream.seen, [])

    @defer.inlineCallbacks
    def test_absolute_form_is_routed_by_authority_and_sent_in_origin_form(self):
        # RFC 9112 3.2.2: the authority wins over the Host header
        code, body = yield self.raw(b"GET http://app.example/a/b?x=1 HTTP/1.1\r\n"
                                    b"Host: other.example\r\n")
        self.assertEqual(code, 200)
        seen = json.loads(body)
        self.assertEqual(seen["uri"], "/a/b?x=1")
        self.assertEqual(seen["env"]["HTTP_X_FORWARDED_HOST"], "app.example")

    @defer.inlineCallbacks
    def test_absolute_form_without_path_and_unknown_authority(self):
        code, body = yield self.raw(b"GET http://APP.example. HTTP/1.1\r\nHost: x\r\n")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["uri"], "/")
        code, _ = yield self.raw(b"GET http://nope.example/ HTTP/1.1\r\nHost: app.example\r\n")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_absolute_form_with_userinfo_is_400(self):
        code, _ = yield self.raw(b"GET http://u:p@app.example/ HTTP/1.1\r\nHost: app.example\r\n")
        self.assertEqual(code, 400)
        self.assertEqual(self.upstream.seen, [])

    @defer.inlineCallbacks
    def test_authority_form_and_other_targets_are_400(self):
        for target in (b"app.example:443", b"ftp://app.example/", b"x"):
            code, _ = yield self.raw(b"CONNECT " + target + b" HTTP/1.1\r\nHost: app.example\r\n")
            self.assertEqual(code, 400, target)
        code, _ = yield self.raw(b"GET x HTTP/1.1\r\nHost: app.example\r\n")
        self.assertEqual(code, 400)
        self.assertEqual(self.upstream.seen, [])
        code, _ = yield self.raw(b"OPTIONS * HTTP/1.1\r\nHost: app.example\r\n")
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_case_and_trailing_dot_route_like_the_plain_name(self):
        for host in (b"APP.Example.", b"app.example.", b"App.Example:80"):
            code, _ = yield self.raw(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n")
            self.assertEqual(code, 200, host)
        self.assertEqual(len(self.upstream.seen), 3)

    @defer.inlineCallbacks
    def test_spellings_route_through_the_store_fed_table(self):
        # the live lookup (MappingStore -> ServiceTable), not a hand-built dict
        use_store_fed_table(self)
        for host in (b"APP.Example.", b"app.example.:443"):
            code, _ = yield self.raw(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n")
            self.assertEqual(code, 200, host)
        self.assertEqual(len(self.upstream.seen), 2)

    @defer.inlineCallbacks
    def test_public_listener_ignores_the_host_port(self):
        # documented: the public listener may sit behind a port mapping
        code, _ = yield self.raw(b"GET / HTTP/1.1\r\nHost: app.example:8443\r\n")
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_underscore_spellings_never_merge_into_identity(self):
        code, body = yield self.raw(
            b"GET / HTTP/1.1\r\nHost: app.example\r\n"
            b"X_NetBird_User: mallory\r\nX-NetBird_User: mallory2\r\n"
            b"x_netbird_groups: admins\r\nX_Forwarded_For: 10.9.9.9\r\n"
            b"X_Real_IP: 10.9.9.9\r\nX-Other_Thing: 1\r\nX-Plain: ok\r\n")
        self.assertEqual(code, 200)
        env = json.loads(body)["env"]
        self.assertNotIn("HTTP_X_NETBIRD_USER", env)
        self.assertNotIn("HTTP_X_NETBIRD_GROUPS", env)
        self.assertNotIn("HTTP_X_OTHER_THING", env)  # every '_' name dropped by default
        self.assertEqual(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1")
        self.assertEqual(env["HTTP_X_REAL_IP"], "127.0.0.1")
        self.assertEqual(env["HTTP_X_PLAIN"], "ok")
        self.assertEqual(self.resource.underscore_dropped, 6)


class AllowUnderscoreTests(FrontDoorTests):
    allow_underscore = True

    @defer.inlineCallbacks
    def test_allowed_underscores_still_never_spoof_identity(self):
        code, body = yield self.raw(
            b"GET / HTTP/1.1\r\nHost: app.example\r\n"
            b"X_NetBird_User: mallory\r\nX-Forwarded_Host: evil\r\nX_Custom: kept\r\n")
        self.assertEqual(code, 200)
        env = json.loads(body)["env"]
        self.assertNotIn("HTTP_X_NETBIRD_USER", env)
        self.assertEqual(env["HTTP_X_FORWARDED_HOST"], "app.example")
        self.assertEqual(env["HTTP_X_CUSTOM"], "kept")


class TunnelFrontDoorTests(FrontDoorTests):
    listener_account = "acct"

    @defer.inlineCallbacks
    def test_host_port_other_than_the_listeners_is_421(self):
        code, body = yield self.raw(b"GET / HTTP/1.1\r\nHost: app.example:1\r\n")
        self.assertEqual(code, 421)
        self.assertIn(b"Misdirected", body)
        self.assertEqual(self.upstream.seen, [])
        # the right port (or none) passes the port check; the request then
        # meets loop detection (this test's peer is the upstream's address)
        for host in (b"app.example:%d" % self.gw_port, b"APP.example."):
            code, body = yield self.raw(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n")
            self.assertNotIn(b"Misdirected", body)
            self.assertIn(b"Loop Detected", body)
        self.assertEqual(self.resource.rejected, {421: 1})

    @defer.inlineCallbacks
    def test_spellings_route_through_the_store_fed_table(self):
        use_store_fed_table(self)
        # routed (the peer is the upstream's address, so loop detection answers)
        for host in (b"APP.Example.", b"app.example.:%d" % self.gw_port):
            code, body = yield self.raw(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n")
            self.assertIn(b"Loop Detected", body, host)
        # the same spelling with a port that is not this listener's is 421, not 404
        code, _ = yield self.raw(b"GET / HTTP/1.1\r\nHost: app.example.:443\r\n")
        self.assertEqual(code, 421)

    @defer.inlineCallbacks
    def test_unknown_host_with_wrong_port_is_still_404(self):
        # no 421 oracle for names this listener does not serve
        code, _ = yield self.raw(b"GET / HTTP/1.1\r\nHost: nope.example:1\r\n")
        self.assertEqual(code, 404)


class NormalisationTests(unittest.TestCase):
    def test_one_function(self):
        self.assertIs(store_mappings.domain_key, domain_key)
        self.assertIs(store_mappings.normalise_domain, domain_key)
        self.assertEqual(domain_key(" APP.Example. "), "app.example")

    def test_store_and_router_agree(self):
        store, table = MappingStore(), ServiceTable()
        store.add_observer(table)
        m = mapping(80, "App.Example.")
        store.apply_batch([m], False)
        for name in ("app.example", "APP.EXAMPLE.", "app.example."):
            self.assertIsNotNone(store.lookup_domain(name), name)
            self.assertIsNotNone(table.lookup(name), name)
        store.apply_batch([pb.ProxyMapping(id=m.id, type=pb.UPDATE_TYPE_REMOVED,
                                           domain=m.domain)], False)
        self.assertIsNone(table.lookup("app.example"))

    def test_split_absolute_form(self):
        self.assertIsNone(split_absolute_form(b"/x"))
        self.assertIsNone(split_absolute_form(b"*"))
        self.assertIsNone(split_absolute_form(b"/http://a/b"))
        self.assertEqual(split_absolute_form(b"HTTP://a.b:8/p?q#f"), (b"a.b:8", b"/p?q"))
        self.assertEqual(split_absolute_form(b"https://a.b?q"), (b"a.b", b"/?q"))
        for bad in (b"http:///x", b"http://u@a/", b"http://a b/"):
            with self.assertRaises(ValueError):
                split_absolute_form(bad)
