"""The listeners' HTTP/1.1 fast path (nbgateway.proxy.fast) against the
twisted.web path it stands in for.

Each parity test sends the same raw bytes to two gateway sites on real
127.0.0.1 sockets, one with the fast path and one without
(``ProxySite(fast=False)``), both proxying to the same real upstream, and
compares the complete response bytes (only the ``Date`` value masked); it
also checks which path served (``fast_requests`` of the channel).  The
deadline tests drive a channel over an in-memory transport on task.Clock."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface import implementer

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.http.site import GatewayResource
from nbgateway.observe.accesslog import AccessLogger
from nbgateway.proxy.fast import FastHTTPChannel
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite, StreamingHTTPChannel
from nbgateway.routes.service import entry_from_mapping

BIG = 200 * 1024


class Upstream(resource.Resource):
    """Answers with what it saw: method, target, body length, identity and
    forwarding headers (the values that do not change between runs)."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        body = request.content.read()
        if request.path == b"/nocontent":
            request.setResponseCode(204)
            return b""
        if request.path == b"/slow":
            d = task.deferLater(reactor, 0.05, lambda: None)
            d.addCallback(lambda _: (request.write(b"late"), request.finish()))
            return server.NOT_DONE_YET
        seen = [request.method, request.uri, b"%d" % len(body)]
        for name in (b"x-netbird-user", b"x-forwarded-host", b"x-forwarded-proto", b"cookie",
                     b"x-custom", b"x-forwarded-for"):
            seen.append(name + b"=" + b",".join(request.requestHeaders.getRawHeaders(name)
                                                  or []))
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"set-cookie", b"up=1; Path=/")
        return b"\n".join(seen) + b"\n"


def mapping(port: int, domain: str, *, private: bool = False, **kw: Any) -> pb.ProxyMapping:
    kw.setdefault("path", [pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/",
                                          options=pb.PathTargetOptions(direct_upstream=True))])
    return pb.ProxyMapping(id=f"svc-{domain}", account_id="acct", domain=domain,
                           private=private, **kw)


class Collect(Protocol):
    def __init__(self, payload: bytes, done: defer.Deferred) -> None:
        self.payload = payload
        self.done = done
        self.data = b""

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(self.data)


class _Factory(ClientFactory):
    def __init__(self, payload: bytes) -> None:
        self.done: defer.Deferred = defer.Deferred()
        self.payload = payload

    def buildProtocol(self, addr: Any) -> Protocol:
        return Collect(self.payload, self.done)


class Logs:
    def __init__(self) -> None:
        self.entries: list[Any] = []

    def send_access_log(self, entry: Any) -> defer.Deferred:
        self.entries.append(entry)
        return defer.succeed(None)


class RecordingSite(ProxySite):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.channels: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        ch = super().buildProtocol(addr)
        self.channels.append(ch)
        return ch


def masked(raw: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", raw)


class FastPathParityTests(unittest.TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.up_port = reactor.listenTCP(0, server.Site(Upstream()), interface="127.0.0.1")
        port = self.up_port.getHost().port
        entries = {m.domain: entry_from_mapping(m) for m in (
            mapping(port, "app.example"),
            mapping(port, "private.example", private=True),
            mapping(port, "narrow.example", access_restrictions=pb.AccessRestrictions(
                allowed_cidrs=["10.9.9.0/24"])),
            mapping(port, "custom.example", path=[pb.PathMapping(
                path="/", target=f"http://127.0.0.1:{port}/",
                options=pb.PathTargetOptions(direct_upstream=True,
                                             custom_headers={"X-Custom": "yes"}))]),
        )}
        self.pools = UpstreamPools(reactor)
        self.proxy = ReverseProxy(reactor, self.pools, lambda a, d: DirectDialer(reactor))
        self.sites: dict[bool, RecordingSite] = {}
        self.logs: dict[bool, Logs] = {}
        self.ports: dict[bool, Any] = {}
        for fast in (True, False):
            self.logs[fast] = Logs()
            res = GatewayResource(lookup=entries.get, proxy=self.proxy, gate=None,
                                  access_log=AccessLogger(self.logs[fast], reactor, linger=0))
            self.sites[fast] = RecordingSite(res, fast=fast)
            self.ports[fast] = reactor.listenTCP(0, self.sites[fast], interface="127.0.0.1")

    @defer.inlineCallbacks
    def tearDown(self) -> Any:
        yield self.pools.close()
        for p in self.ports.values():
            yield p.stopListening()
        yield self.up_port.stopListening()
        for site in self.sites.values():
            for ch in site.channels:
                if ch.transport is not None and not ch.transport.disconnected:
                    ch.transport.abortConnection()

    @defer.inlineCallbacks
    def exchange(self, fast: bool, payload: bytes) -> Any:
        f = _Factory(payload)
        reactor.connectTCP("127.0.0.1", self.ports[fast].getHost().port, f)
        raw = yield f.done
        return raw

    @defer.inlineCallbacks
    def both(self, payload: bytes, *, fast_served: int) -> Any:
        """The fast and the twisted.web answer to ``payload``: identical."""
        fast = yield self.exchange(True, payload)
        slow = yield self.exchange(False, payload)
        self.assertEqual(masked(fast), masked(slow))
        ch = self.sites[True].channels[-1]
        self.assertIsInstance(ch, FastHTTPChannel)
        self.assertEqual(ch.fast_requests, fast_served)
        self.assertEqual(type(self.sites[False].channels[-1]), StreamingHTTPChannel)
        return fast

    @defer.inlineCallbacks
    def test_proxied_get_head_and_headers(self):
        raw = yield self.both(
            b"GET /a?b=1 HTTP/1.1\r\nHost: app.example\r\nX-NetBird-User: spoof\r\n"
            b"Cookie: nb_session=x; keep=1\r\nConnection: close\r\n\r\n", fast_served=1)
        self.assertTrue(raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw)
        self.assertIn(b"\r\nConnection: close\r\n", raw)
        self.assertIn(b"x-netbird-user=\n", raw)  # the spoofed identity never passes
        self.assertIn(b"cookie=keep=1\n", raw)
        raw = yield self.both(b"HEAD / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
                              fast_served=1)
        self.assertTrue(raw.endswith(b"\r\n\r\n"), raw)
        raw = yield self.both(b"GET / HTTP/1.1\r\nHost: custom.example:80\r\n"
                              b"Connection: close\r\n\r\n", fast_served=1)
        self.assertIn(b"x-custom=yes\n", raw)

    @defer.inlineCallbacks
    def test_errors_rendered_by_the_fast_path(self):
        raw = yield self.both(b"GET / HTTP/1.1\r\nHost: nowhere.example\r\n"
                              b"Connection: close\r\n\r\n", fast_served=1)
        self.assertTrue(raw.startswith(b"HTTP/1.1 404 "), raw)
        raw = yield self.both(b"GET / HTTP/1.1\r\nHost: private.example\r\n"
                              b"Connection: close\r\n\r\n", fast_served=1)
        self.assertTrue(raw.startswith(b"HTTP/1.1 403 "), raw)
        raw = yield self.both(b"GET / HTTP/1.1\r\nHost: narrow.example\r\n"
                              b"Connection: close\r\n\r\n", fast_served=1)
        self.assertTrue(raw.startswith(b"HTTP/1.1 403 "), raw)
        # the front door's 400 for a duplicate Host closes the connection
        raw = yield self.both(b"GET / HTTP/1.1\r\nHost: app.example\r\nHost: x\r\n\r\n"
                              b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n", fast_served=1)
        self.assertEqual(raw.count(b"HTTP/1.1 "), 1, raw)
        self.assertTrue(raw.startswith(b"HTTP/1.1 400 "), raw)

    @defer.inlineCallbacks
    def test_keep_alive_and_pipelining_in_order(self):
        payload = b"".join(
            b"GET /%d HTTP/1.1\r\nHost: app.example\r\n\r\n" % i for i in range(5))
        payload += b"GET /nocontent HTTP/1.1\r\nHost: app.example\r\n\r\n"
        payload += b"GET /slow HTTP/1.1\r\nHost: app.example\r\n\r\n"
        payload += b"GET /last HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
        raw = yield self.both(payload, fast_served=8)
        targets = re.findall(rb"\nGET\n(/[^\n]*)\n", raw)
        self.assertEqual(targets, [b"/%d" % i for i in range(5)] + [b"/last"])
        self.assertIn(b"HTTP/1.1 204 No Content\r\n", raw)
        self.assertIn(b"\r\n\r\n4\r\nlate\r\n0\r\n\r\n", raw)  # chunked, in its place
        # one access-log entry per request on both paths
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.logs[True].entries), 8)
        self.assertEqual([e.path for e in self.logs[True].entries],
                         [e.path for e in self.logs[False].entries])

    @defer.inlineCallbacks
    def test_request_bodies_buffered_and_streamed(self):
        small = b"x" * 1000
        raw = yield self.both(
            b"POST /s HTTP/1.1\r\nHost: app.example\r\nContent-Length: %d\r\n\r\n%s"
            % (len(small), small)
            + b"POST /e HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0\r\n"
              b"Connection: close\r\n\r\n", fast_served=2)
        self.assertIn(b"POST\n/s\n1000\n", raw)
        self.assertIn(b"POST\n/e\n0\n", raw)
        big = b"y" * BIG
        raw = yield self.both(
            b"PUT /big HTTP/1.1\r\nHost: app.example\r\nContent-Length: %d\r\n\r\n%s"
            % (len(big), big)
            + b"GET /after HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
            fast_served=2)
        self.assertIn(b"PUT\n/big\n%d\n" % BIG, raw)
        self.assertIn(b"GET\n/after\n0\n", raw)
        yield task.deferLater(reactor, 0.05, lambda: None)
        uploads = {e.path: e.bytes_upload for e in self.logs[True].entries}
        self.assertEqual(uploads["/big"], BIG)
        self.assertEqual(uploads["/s"], 1000)

    @defer.inlineCallbacks
    def test_early_answer_to_a_streamed_upload_closes(self):
        """A 403 before a large body arrived: the rest is unread, the
        connection closes after the answer (on both paths)."""
        big = b"z" * BIG
        raw = yield self.both(
            b"PUT /up HTTP/1.1\r\nHost: private.example\r\nContent-Length: %d\r\n\r\n%s"
            % (len(big), big)
            + b"GET /never HTTP/1.1\r\nHost: app.example\r\n\r\n", fast_served=1)
        self.assertTrue(raw.startswith(b"HTTP/1.1 403 "), raw[:200])
        self.assertEqual(raw.count(b"HTTP/1.1 "), 1)

    def test_fast_route_declines_operator_schemes(self):
        port = self.up_port.getHost().port
        entries = {m.domain: entry_from_mapping(m) for m in (
            mapping(port, "app.example"), mapping(port, "private.example", private=True),
            mapping(port, "login.example", auth=pb.Authentication(
                session_key="A" * 43 + "=", password=True)),
        )}
        res = GatewayResource(lookup=entries.get, proxy=self.proxy, gate=None)
        self.assertTrue(entries["login.example"].has_schemes)
        self.assertFalse(res.fast_route(b"login.example"))
        self.assertFalse(res.fast_route(b"Login.Example:80"))
        self.assertTrue(res.fast_route(b"app.example"))
        self.assertTrue(res.fast_route(b"private.example"))
        self.assertTrue(res.fast_route(b"unknown.example"))

    @defer.inlineCallbacks
    def test_handed_to_twisted_web(self):
        """Requests the fast path does not serve get twisted.web's answer;
        the requests before them on the connection stay on the fast path."""
        cases = [
            b"GET http://app.example/abs HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: app.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade, close\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: app.example\r\n\r\n",
            b"BREW / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 1\r\n"
            b"Content-Length: 2\r\n\r\nab",
        ]
        for case in cases:
            yield self.both(b"GET /first HTTP/1.1\r\nHost: app.example\r\n\r\n" + case,
                            fast_served=1)
            self.assertFalse(self.sites[True].channels[-1].fast)

    @defer.inlineCallbacks
    def test_a_close_token_in_the_connection_list_closes(self):
        """``Connection`` is a comma-separated list (RFC 9110 7.6.1): a
        ``close`` token anywhere in it, in any case, in any field, closes on
        both paths (twisted.web split the first field on spaces, so ``close,
        X-Foo`` or ``keep-alive,close`` kept the connection open); the
        exchange completes only when the gateway closes."""
        for value in (b"close, X-Foo", b"keep-alive,close", b"Keep-Alive, Close",
                      b"X-Foo ,close", b"CLOSE", b"keep-alive\r\nConnection: close"):
            raw = yield self.both(b"GET /a HTTP/1.1\r\nHost: app.example\r\nConnection: "
                                  + value + b"\r\n\r\n", fast_served=1)
            self.assertTrue(raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw)
            self.assertIn(b"\r\nConnection: close\r\n", raw)
        # a list without the token keeps the connection for the next request
        raw = yield self.both(b"GET /a HTTP/1.1\r\nHost: app.example\r\nConnection: "
                              b"keep-alive, X-Foo\r\n\r\nGET /b HTTP/1.1\r\nHost: app.example"
                              b"\r\nConnection: close\r\n\r\n", fast_served=2)
        self.assertEqual(raw.count(b"HTTP/1.1 200 OK\r\n"), 2, raw)


class _Never(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        return server.NOT_DONE_YET


class _FastNever(_Never):
    fast_protocol = FastHTTPChannel

    @staticmethod
    def fast_route(host: bytes) -> bool:
        return True


@implementer(ISSLTransport)
class _TLSLike(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def never_channel(**site_kw: Any) -> tuple[task.Clock, Any, StringTransport, _FastNever]:
    """A :class:`ProxySite` (``site_kw``) on a fresh ``task.Clock`` in front of a
    :class:`_FastNever`: its fast channel, connected to a ``StringTransport`` from
    127.0.0.1:1234; ``(clock, channel, transport, resource)``."""
    clock = task.Clock()
    res = _FastNever()
    site = ProxySite(res, reactor=clock, **site_kw)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    assert isinstance(channel, FastHTTPChannel), channel
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
    channel.makeConnection(transport)
    return clock, channel, transport, res


class FastPathDeadlineTests(unittest.TestCase):
    def make(self, **kw: Any) -> tuple[task.Clock, Any, StringTransport, _FastNever]:
        return never_channel(**kw)

    def test_slow_head_gets_408(self):
        clock, channel, transport, _res = self.make(header_timeout=5, timeout=100)
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\n":
            channel.dataReceived(bytes([byte]))
            clock.advance(0.25)
        self.assertIn(b"408 Request Timeout", transport.value())
        self.assertEqual(channel.header_timeouts, 1)
        self.assertTrue(transport.disconnecting)

    def test_idle_timeout_waits_for_the_request_in_flight(self):
        clock, channel, transport, res = self.make(header_timeout=5, timeout=10)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(res.requests), 1)
        clock.advance(25)  # the response is slow: not an idle connection
        self.assertFalse(transport.disconnecting)
        request = res.requests[0]
        request.setHeader(b"content-length", b"2")
        request.write(b"ok")
        request.finish()
        self.assertTrue(transport.value().endswith(b"\r\n\r\nok"))
        clock.advance(11)  # now idle
        self.assertTrue(transport.disconnecting)

    def test_client_gone_errbacks_the_request(self):
        _clock, channel, transport, res = self.make()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n")
        request = res.requests[0]
        lost: list[Any] = []
        request.notifyFinish().addErrback(lost.append)
        channel.connectionLost(Exception("gone"))
        self.assertEqual(len(lost), 1)
        request.write(b"ignored")  # writing to a gone client is a no-op, as in twisted.web
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(res.requests), 1)

    def test_pipelined_bytes_are_bounded(self):
        _clock, channel, transport, res = self.make()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        for _ in range(40):
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"z" * 4000 + b"\r\n\r\n")
        self.assertEqual(transport.producerState, "paused")
        request = res.requests[0]
        request.setHeader(b"content-length", b"0")
        request.finish()
        self.assertEqual(len(res.requests), 2)  # served one at a time
        self.assertEqual(transport.producerState, "producing")

    def test_one_parser_across_bodiless_requests_a_fresh_one_after_a_body(self):
        """The request parser is kept while llhttp is back at the start of a
        message (bodiless requests) and replaced after a head whose body it
        was not fed; every request is parsed on its own (no field leaks)."""
        _clock, channel, _transport, res = self.make()

        def answer() -> None:
            request = res.requests[-1]
            request.setHeader(b"content-length", b"0")
            request.finish()

        channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: a\r\nX_U: 1\r\nX-A: 1\r\n\r\n")
        parser = channel._parser
        self.assertIsNotNone(parser)
        answer()
        channel.dataReceived(b"GET /2?q HTTP/1.1\r\nHost: b\r\n\r\n")
        self.assertIs(channel._parser, parser)
        second = res.requests[-1]
        self.assertEqual((second.uri, second.getHeader(b"host")), (b"/2?q", b"b"))
        self.assertIsNone(second.requestHeaders.getRawHeaders(b"x-a"))
        self.assertFalse(second.underscore_names)
        self.assertTrue(res.requests[0].underscore_names)
        answer()
        channel.dataReceived(b"POST /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        self.assertIsNone(channel._parser)  # llhttp would wait for the body
        self.assertEqual(res.requests[-1].content.getvalue(), b"abc")
        answer()
        channel.dataReceived(b"GET /4 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((res.requests[-1].method, res.requests[-1].uri), (b"GET", b"/4"))
        self.assertIsNotNone(channel._parser)
        answer()
        channel.dataReceived(b"DELETE /5 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(res.requests[-1].method, b"DELETE")
        self.assertEqual(channel.fast_requests, 5)

    def test_secure_follows_the_transport(self):
        _clock, channel, _transport, res = self.make()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertFalse(res.requests[0].isSecure())
        clock = task.Clock()
        site = ProxySite(res, reactor=clock)
        tls_channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        tls_transport = _TLSLike()
        tls_channel.makeConnection(tls_transport)
        tls_channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(tls_channel.fast_requests, 1)
        self.assertTrue(res.requests[1].isSecure())

    def test_a_stalled_streamed_body_times_out(self):
        clock, channel, transport, res = self.make(header_timeout=5, timeout=10)
        channel.dataReceived(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"
                             + b"x" * 1000)
        self.assertEqual(len(res.requests), 1)  # streamed: dispatched at the head
        clock.advance(11)
        self.assertTrue(transport.disconnecting)

    def test_disabled_is_twisted_web(self):
        clock = task.Clock()
        site = ProxySite(_FastNever(), reactor=clock, fast=False)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        self.assertIs(type(channel), StreamingHTTPChannel)
