"""Edge cases of the reverse proxy: clients leaving mid-response or while the
upstream is still thinking, an upstream answering before the request body is
complete, a truncated upstream body, and the error classification."""

from __future__ import annotations

import errno

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web._newclient import ResponseNeverReceived

from nbgateway.dial import ProxyNotConnectedError
from nbgateway.proxy import pages
from nbgateway.proxy.failures import classify_error
from nbgateway.proxy.failures import root_cause as _root_cause
from nbgateway.routes.service import TargetOptions

from ._harness import EchoUpstream, ProxyHarness, curl, listen_protocol, listen_site, wait_for
from .test_reverse_streaming import BigResource, SlowClient


class RawClient(Protocol):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.buf = b""
        self.closed = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.buf += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)


class EarlyAnswer(Protocol):
    """Answers 413 as soon as the request head arrived, then closes."""

    def __init__(self) -> None:
        self.buf = b""
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if not self.answered and b"\r\n\r\n" in self.buf:
            self.answered = True
            self.transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n"
                                 b"Connection: close\r\n\r\nbig!")
            self.transport.loseConnection()


class Truncating(Protocol):
    """Promises 1000 bytes, sends 10, then drops the connection."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            reactor.callLater(0.05, self.transport.abortConnection)


class Garbage(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"SPDY/9 what\r\n\r\n")
        self.transport.loseConnection()


class Holding(Protocol):
    instances: list = []

    def connectionMade(self) -> None:
        Holding.instances.append(self)
        self.lost = False

    def connectionLost(self, reason) -> None:
        self.lost = True


class EdgeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = ProxyHarness()
        self.port = self.h.listen()
        self.addCleanup(self.h.close)

    def raw(self, data: bytes) -> defer.Deferred:
        client = RawClient(data)
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)

    @defer.inlineCallbacks
    def test_client_leaving_mid_response_closes_upstream(self):
        big = BigResource(b"x" * (32 * 1024 * 1024))
        up, _ = listen_site(big)
        self.addCleanup(up.stopListening)
        self.h.add("big.example", {"/": f"http://127.0.0.1:{up.getHost().port}/"})
        client = SlowClient("big.example")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        yield wait_for(lambda: big.body is not None and big.body.paused)
        upstream_done = big.body.request.notifyFinish()
        client.transport.abortConnection()
        # the upstream request is cut off (connection lost), not drained
        outcome = yield upstream_done.addCallbacks(lambda _: "finished", lambda f: f.value)
        self.assertIsInstance(outcome, error.ConnectionLost | error.ConnectionDone)
        self.assertLess(big.body.pos, len(big.data))

    @defer.inlineCallbacks
    def test_client_leaving_while_waiting_closes_upstream(self):
        Holding.instances = []
        up = listen_protocol(Holding)
        self.addCleanup(up.stopListening)
        self.h.add("w.example", {"/": f"http://127.0.0.1:{up.getHost().port}/"})
        client = yield self.raw(b"GET / HTTP/1.1\r\nHost: w.example\r\n\r\n")
        yield wait_for(lambda: Holding.instances)
        client.transport.abortConnection()
        yield wait_for(lambda: Holding.instances[0].lost)

    @defer.inlineCallbacks
    def test_early_response_while_body_streams(self):
        up = listen_protocol(EarlyAnswer)
        self.addCleanup(up.stopListening)
        self.h.add("e.example", {"/": f"http://127.0.0.1:{up.getHost().port}/"})
        head = (b"POST /u HTTP/1.1\r\nHost: e.example\r\nContent-Length: 10000000\r\n\r\n")
        client = yield self.raw(head + b"a" * 1_000_000)
        yield client.closed  # the proxy closes: the rest of the body is unread
        self.assertTrue(client.buf.startswith(b"HTTP/1.1 413"), client.buf[:100])
        self.assertTrue(client.buf.endswith(b"big!"))

    @defer.inlineCallbacks
    def test_truncated_upstream_body_aborts_client(self):
        up = listen_protocol(Truncating)
        self.addCleanup(up.stopListening)
        self.h.add("t.example", {"/": f"http://127.0.0.1:{up.getHost().port}/"})
        client = yield self.raw(b"GET / HTTP/1.1\r\nHost: t.example\r\n\r\n")
        yield client.closed
        head, _, body = client.buf.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: 1000", head)
        self.assertEqual(body, b"0123456789")  # short: the client can tell

    @defer.inlineCallbacks
    def test_pipelined_requests_after_streamed_body(self):
        echo = EchoUpstream()
        up, _ = listen_site(echo)
        self.addCleanup(up.stopListening)
        self.h.add("p.example", {"/": f"http://127.0.0.1:{up.getHost().port}/"})
        body = b"b" * 200_000
        req1 = (b"POST /one HTTP/1.1\r\nHost: p.example\r\nContent-Length: %d\r\n\r\n"
                % len(body)) + body
        req2 = b"GET /two HTTP/1.1\r\nHost: p.example\r\nConnection: close\r\n\r\n"
        client = yield self.raw(req1 + req2)
        yield client.closed
        self.assertEqual(client.buf.count(b"HTTP/1.1 200"), 2)
        self.assertEqual([s["uri"] for s in echo.seen], ["/one", "/two"])
        self.assertEqual(echo.seen[0]["body_len"], len(body))

    @defer.inlineCallbacks
    def test_inflight_limit_is_503_and_released(self):
        Holding.instances = []
        up = listen_protocol(Holding)
        self.addCleanup(up.stopListening)
        self.h.proxy.max_inflight = 1
        self.h.add("w.example", {"/": f"http://127.0.0.1:{up.getHost().port}/"})
        first = yield self.raw(b"GET / HTTP/1.1\r\nHost: w.example\r\n\r\n")
        yield wait_for(lambda: Holding.instances)
        status, _, body = yield curl("-H", "Host: w.example", f"http://127.0.0.1:{self.port}/")
        self.assertEqual(status, 503)
        self.assertIn(b"Service Overloaded", body)
        self.assertEqual(self.h.proxy.inflight, {"acc1": 1})
        first.transport.abortConnection()
        yield wait_for(lambda: not self.h.proxy.inflight)

    @defer.inlineCallbacks
    def test_garbage_from_upstream_is_502(self):
        up = listen_protocol(Garbage)
        self.addCleanup(up.stopListening)
        self.h.add("g.example", {"/": f"http://127.0.0.1:{up.getHost().port}/"})
        status, _, body = yield curl("-H", "Host: g.example", f"http://127.0.0.1:{self.port}/")
        self.assertEqual(status, 502)
        self.assertIn(b"Connection Error", body)

    @defer.inlineCallbacks
    def test_dial_that_never_completes_is_504(self):
        """A SYN-blackholed target: the dial itself outlives the request timeout."""
        cancelled = []

        class Blackhole:
            def connect(self, factory):
                return defer.Deferred(lambda d: cancelled.append(True))

        self.h.tunnel.attach(lambda host, port, timeout: Blackhole())
        self.h.add("b.example", {"/": "http://100.64.0.77:8080/"},
                   opts=TargetOptions(request_timeout=0.2))
        status, _, body = yield curl("-H", "Host: b.example", f"http://127.0.0.1:{self.port}/")
        self.assertEqual(status, 504)
        self.assertIn(b"Request Timeout", body)
        self.assertEqual(cancelled, [True])

    def test_classify_error(self):
        self.assertIs(classify_error(error.ConnectionRefusedError()), pages.SERVICE_UNAVAILABLE)
        self.assertIs(classify_error(error.NoRouteError()), pages.PEER_NOT_CONNECTED)
        self.assertIs(classify_error(OSError(errno.EHOSTUNREACH, "x")), pages.PEER_NOT_CONNECTED)
        self.assertIs(classify_error(error.TimeoutError()), pages.REQUEST_TIMEOUT)
        self.assertIs(classify_error(error.TCPTimedOutError()), pages.REQUEST_TIMEOUT)
        self.assertIs(classify_error(defer.CancelledError(), timed_out=True),
                      pages.REQUEST_TIMEOUT)
        self.assertIs(classify_error(defer.CancelledError()), pages.REQUEST_CANCELED)
        self.assertIs(classify_error(ProxyNotConnectedError()), pages.PROXY_NOT_CONNECTED)
        self.assertIs(classify_error(error.DNSLookupError()), pages.CONNECTION_ERROR)
        wrapped = Failure(ResponseNeverReceived([Failure(error.ConnectionRefusedError())]))
        self.assertIsInstance(_root_cause(wrapped), error.ConnectionRefusedError)

    def test_error_page_escapes(self):
        page = pages.ErrorPage(502, "<b>x</b>", "</script><script>alert(1)")
        body = pages.render_page(page, destination="</script>", request_id="<i>")
        self.assertNotIn(b"<b>x</b>", body)
        self.assertNotIn(b"</script><script>", body)
        self.assertEqual(body.count(b"</script>"), 1)


class PlainSiteTests(unittest.TestCase):
    """The proxy also works under a stock twisted.web Site (bodies buffered)."""

    @defer.inlineCallbacks
    def test_large_buffered_body_is_streamed_from_the_spool_file(self):
        h = ProxyHarness(streaming=False)
        port = h.listen()
        self.addCleanup(h.close)
        echo = EchoUpstream()
        up, _ = listen_site(echo)
        self.addCleanup(up.stopListening)
        h.add("p.example", {"/": f"http://127.0.0.1:{up.getHost().port}/"})
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"q" * 300_000)
        status, _, _ = yield curl("-H", "Host: p.example", "--data-binary", "@" + path,
                                  f"http://127.0.0.1:{port}/")
        self.assertEqual(status, 200)
        self.assertEqual(echo.seen[0]["body_len"], 300_000)
        self.assertIsNone(getattr(h.requests[0], "body_stream", None))
