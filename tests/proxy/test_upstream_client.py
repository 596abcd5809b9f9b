"""The lean pooled HTTP/1.1 upstream client (nbgateway.dial.http11).

Sans-IO: connections are ``StringTransport``s handed out by a fake endpoint,
responses are fed as bytes, idle timeouts run on a ``task.Clock``."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web._newclient import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from nbgateway.dial.http11 import ConnectionPool, LeanAgent, split_url
from nbgateway.dial.pool import UpstreamPools

URL = b"http://10.0.0.5:8080/a/b?q=1"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello"


class FakeEndpoints:
    """Every dial is recorded; each connects a protocol to a StringTransport."""

    def __init__(self) -> None:
        self.dials: list[tuple[str, int, bool]] = []
        self.conns: list[tuple[StringTransport, Protocol]] = []

    def endpoint_for(self, host: str, port: int, tls: bool):
        self.dials.append((host, port, tls))
        outer = self

        class EP:
            def connect(self, factory):
                proto = factory.buildProtocol(None)
                t = StringTransport()
                proto.makeConnection(t)
                outer.conns.append((t, proto))
                return defer.succeed(proto)

        return EP()


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason


class Producer:
    """A streaming request body of unknown length written on demand."""

    def __init__(self, length=UNKNOWN_LENGTH) -> None:
        self.length = length
        self.consumer = None
        self.done: defer.Deferred | None = None
        self.stopped = False

    def startProducing(self, consumer):
        self.consumer = consumer
        self.done = defer.Deferred()
        return self.done

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        self.stopped = True


class Base(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.pool = ConnectionPool(self.clock, 4, 90.0)
        self.eps = FakeEndpoints()
        self.agent = LeanAgent(self.pool, self.eps.endpoint_for)

    def fetch(self, method=b"GET", url=URL, response=OK, body=None, headers=None):
        d = self.agent.request(method, url, headers or Headers({b"X-A": [b"1"]}), body)
        t, proto = self.eps.conns[-1]
        if response:
            proto.dataReceived(response)
        resp = self.successResultOf(d)
        sink = Collect()
        resp.deliverBody(sink)
        return resp, sink, t, proto


class PoolTests(Base):
    def test_keep_alive_connection_is_reused_and_head_is_one_block(self):
        resp, sink, t, _ = self.fetch()
        self.assertEqual((resp.code, resp.phrase, resp.length), (200, b"OK", 5))
        self.assertEqual(resp.headers.getRawHeaders(b"x-up"), [b"1"])
        self.assertEqual(sink.data, b"hello")
        sink.reason.trap(ResponseDone)
        self.assertEqual(
            t.value(), b"GET /a/b?q=1 HTTP/1.1\r\nX-A: 1\r\nHost: 10.0.0.5:8080\r\n\r\n")
        self.assertEqual(self.pool.idle(), 1)
        self.fetch()
        self.assertEqual(len(self.eps.dials), 1)  # second request on the same connection
        self.assertEqual(self.pool.idle(), 1)

    def test_connection_close_and_http10_are_not_reused(self):
        self.fetch(response=b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.pool.idle(), 0)
        self.fetch(response=b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.pool.idle(), 0)
        self.assertEqual(len(self.eps.dials), 2)

    def test_partial_read_is_never_reused(self):
        _resp, sink, t, _ = self.fetch(
            response=b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        self.assertEqual(sink.data, b"half")
        sink.transport.stopProducing()  # the client went away mid-body
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.pool.idle(), 0)

    def test_malformed_response_fails_and_is_not_reused(self):
        d = self.agent.request(b"GET", URL, Headers(), None)
        t, proto = self.eps.conns[-1]
        proto.dataReceived(b"HTTP/1.1 abc nonsense\r\n\r\n")
        self.failureResultOf(d, ResponseFailed)
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.pool.idle(), 0)

    def test_short_body_fails_the_relay(self):
        _, sink, _, proto = self.fetch(
            response=b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        proto.connectionLost(Failure(ConnectionError("reset")))
        sink.reason.trap(ResponseFailed)
        self.assertEqual(self.pool.idle(), 0)

    def test_idle_timeout_on_the_clock(self):
        _, _, t, proto = self.fetch()
        self.assertEqual(self.pool.idle(), 1)
        self.clock.advance(89)
        self.assertFalse(t.disconnecting)
        self.clock.advance(2)
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.pool.idle(), 0)
        proto.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pooled_idle_deadline_makes_no_timer_call_per_request(self):
        """Requests one at a time on a pooled connection: its idle deadline is
        added and cancelled on the lingering timer (one timer call in all),
        and it still closes exactly 90 s after the last response."""
        for _ in range(50):
            self.fetch()
            self.clock.advance(0.01)
        _, _, t, proto = self.fetch()  # released at t = 0.5: due at 90.5
        self.assertEqual(len(self.eps.dials), 1)
        self.assertEqual(self.pool.idle_deadlines.armed, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(89.9)  # the lingering timer (90.0) fired and re-armed
        self.assertFalse(t.disconnecting)
        self.assertEqual(self.pool.idle(), 1)
        self.clock.advance(0.2)
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.pool.idle(), 0)
        proto.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closing_the_pool_leaves_no_timer(self):
        _, _, t, proto = self.fetch()
        _, _, _, _ = self.fetch()  # the first idle deadline's timer lingers
        d = self.pool.closeCachedConnections()
        self.assertTrue(t.disconnecting)
        proto.connectionLost(Failure(ConnectionError()))
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bounded_idle_per_target(self):
        pool = ConnectionPool(self.clock, 1, 90.0)
        agent = LeanAgent(pool, self.eps.endpoint_for)
        d1 = agent.request(b"GET", URL, Headers(), None)
        d2 = agent.request(b"GET", URL, Headers(), None)  # concurrent: second connection
        for (_t, proto), d in zip(self.eps.conns, (d1, d2), strict=True):
            proto.dataReceived(OK)
            self.successResultOf(d).deliverBody(Collect())
        self.assertEqual(pool.idle(), 1)
        self.assertTrue(self.eps.conns[1][0].disconnecting)

    def test_stale_reused_connection_is_retried_once_for_get(self):
        self.fetch()
        d = self.agent.request(b"GET", URL, Headers(), None)
        _, stale = self.eps.conns[-1]
        stale.connectionLost(Failure(ConnectionError("closed while idle")))
        self.assertEqual(len(self.eps.dials), 2)  # redialed
        self.eps.conns[-1][1].dataReceived(OK)
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_stale_reused_connection_is_not_retried_for_a_streamed_post(self):
        self.fetch()
        d = self.agent.request(b"POST", URL, Headers(), Producer())
        self.eps.conns[-1][1].connectionLost(Failure(ConnectionError("closed")))
        self.failureResultOf(d, ResponseFailed)
        self.assertEqual(len(self.eps.dials), 1)

    def test_cancel_aborts_and_never_pools(self):
        d = self.agent.request(b"GET", URL, Headers(), None)
        t, _ = self.eps.conns[-1]
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.pool.idle(), 0)

    def test_pools_close_account_closes_lean_connections(self):
        pools = UpstreamPools(self.clock)
        pool = pools.pool("A", False, False)
        agent = LeanAgent(pool, self.eps.endpoint_for)
        d = agent.request(b"GET", URL, Headers(), None)
        t, proto = self.eps.conns[-1]
        proto.dataReceived(OK)
        self.successResultOf(d).deliverBody(Collect())
        self.assertEqual(pools.idle_connections("A"), 1)
        closed = pools.close_account("A")
        self.assertTrue(t.disconnecting)
        self.assertNoResult(closed)
        proto.connectionLost(Failure(ConnectionError()))
        self.successResultOf(closed)


class FramingTests(Base):
    def test_chunked_response(self):
        resp, sink, _, _ = self.fetch(response=(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))
        self.assertIs(resp.length, UNKNOWN_LENGTH)
        self.assertEqual(sink.data, b"abcde")
        sink.reason.trap(ResponseDone)
        self.assertEqual(self.pool.idle(), 1)

    def test_framing_header_names_in_any_case(self):
        resp, sink, _, _ = self.fetch(response=(
            b"HTTP/1.1 200 OK\r\ntransfer-ENCODING: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"))
        self.assertIs(resp.length, UNKNOWN_LENGTH)
        self.assertEqual(sink.data, b"abc")
        resp, sink, _, _ = self.fetch(response=(
            b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 4\r\nx-up: 1\r\n\r\nabcd"))
        self.assertEqual(resp.length, 4)
        self.assertEqual(resp.headers.getRawHeaders(b"Content-Length"), [b"4"])
        self.assertEqual(sink.data, b"abcd")
        self.assertEqual(self.pool.idle(), 1)

    def test_chunked_request_body_and_reuse_after_it_is_sent(self):
        body = Producer()
        d = self.agent.request(b"POST", URL, Headers(), body)
        t, proto = self.eps.conns[-1]
        body.consumer.write(b"hello")
        body.consumer.write(b"")
        body.done.callback(None)
        self.assertTrue(t.value().endswith(
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
        proto.dataReceived(OK)
        self.successResultOf(d).deliverBody(Collect())
        self.assertEqual(self.pool.idle(), 1)

    def test_content_length_request_body(self):
        body = Producer(length=3)
        self.agent.request(b"PUT", URL, Headers(), body)
        t, _ = self.eps.conns[-1]
        body.consumer.write(b"abc")
        self.assertIn(b"Content-Length: 3\r\n\r\nabc", t.value())
        self.assertNotIn(b"chunked", t.value())

    def test_early_response_stops_the_upload_and_closes(self):
        body = Producer()
        d = self.agent.request(b"POST", URL, Headers(), body)
        _t, proto = self.eps.conns[-1]
        proto.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.successResultOf(d).deliverBody(Collect())
        self.assertTrue(body.stopped)
        self.assertEqual(self.pool.idle(), 0)

    def test_head_has_no_body_despite_content_length(self):
        resp, sink, _t, _ = self.fetch(
            method=b"HEAD", response=b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        self.assertEqual(resp.length, 0)
        self.assertEqual(sink.data, b"")
        sink.reason.trap(ResponseDone)

    def test_204_and_304_have_no_body_and_are_reused(self):
        for status in (b"204 No Content", b"304 Not Modified"):
            resp, sink, _, _ = self.fetch(response=b"HTTP/1.1 " + status + b"\r\n\r\n")
            self.assertEqual(resp.length, 0)
            sink.reason.trap(ResponseDone)
        self.assertEqual(len(self.eps.dials), 1)

    def test_interim_100_is_skipped(self):
        resp, sink, _, _ = self.fetch(response=b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        self.assertEqual(resp.code, 200)
        self.assertEqual(sink.data, b"hello")

    def test_close_delimited_body(self):
        resp, sink, _t, proto = self.fetch(response=b"HTTP/1.1 200 OK\r\n\r\nstream")
        self.assertIs(resp.length, UNKNOWN_LENGTH)
        proto.dataReceived(b"ing")
        self.assertIsNone(sink.reason)
        proto.connectionLost(Failure(ConnectionError()))
        self.assertEqual(sink.data, b"streaming")
        sink.reason.trap(PotentialDataLoss)
        self.assertEqual(self.pool.idle(), 0)

    def test_body_backpressure_reaches_the_upstream_transport(self):
        _, sink, t, _ = self.fetch(
            response=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx")
        sink.transport.pauseProducing()
        self.assertEqual(t.producerState, "paused")
        sink.transport.resumeProducing()
        self.assertEqual(t.producerState, "producing")

    def test_bad_urls_fail(self):
        for url in (b"ftp://x/", b"http://:80/", b"http://h:0/", b"http://[::1/"):
            self.failureResultOf(self.agent.request(b"GET", url, Headers(), None), ValueError)
        self.assertEqual(split_url(b"https://[fd00::1]/x")[1:3], (b"[fd00::1]", 443))


class ThroughTheProxyTests(unittest.TestCase):
    """The lean client behind the real ReverseProxy, over loopback sockets."""

    @defer.inlineCallbacks
    def test_connection_named_response_headers_are_dropped_and_bodies_relayed(self):
        from ._harness import ProxyHarness, curl, listen_protocol

        class Upstream(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if b"\r\n\r\n" in data:
                    self.transport.write(
                        b"HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\n"
                        b"X-Secret: leak\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"4\r\nbody\r\n0\r\n\r\n")
                    self.transport.loseConnection()

        up = listen_protocol(Upstream)
        self.addCleanup(up.stopListening)
        h = ProxyHarness()
        port = h.listen()
        self.addCleanup(h.close)
        h.add("app.example", {"/": f"http://127.0.0.1:{up.getHost().port}/"})
        status, head, body = yield curl("-H", "Host: app.example",
                                        f"http://127.0.0.1:{port}/x")
        self.assertEqual((status, body), (200, b"body"))
        self.assertIn("x-kept: yes", head.lower())
        self.assertNotIn("x-secret", head.lower())
        self.assertEqual(h.pools.idle_connections(), 0)  # Connection: close


class ProxyDeadlineTests(unittest.SynchronousTestCase):
    def test_request_timeout_on_the_clock_gives_504_and_drops_the_connection(self):
        """The proxy's request timeout (task.Clock) cancels a lean-client
        request whose upstream never answers: 504, the connection is aborted
        and never pooled, no timer is left behind."""
        from nbgateway.proxy.reverse import ReverseProxy
        from nbgateway.routes.context import RequestContext
        from nbgateway.routes.paths import PathRouter, parse_target
        from nbgateway.routes.service import ProxyService, TargetOptions

        from .test_reverse_streaming import _FakeRequest

        clock = task.Clock()
        eps = FakeEndpoints()

        class Dialer:
            def endpoint(self, host, port, timeout):
                return eps.endpoint_for(host, port, False)

        pools = UpstreamPools(clock)
        proxy = ReverseProxy(clock, pools, lambda account, direct: Dialer(), clock=clock)
        route = parse_target("/", "http://100.64.0.9:8080/", TargetOptions(request_timeout=2.0))
        request = _FakeRequest(None)
        proxy.render(request, RequestContext(service=ProxyService(
            "acc", "u.example", PathRouter([route]))))
        t, _ = eps.conns[-1]
        self.assertTrue(t.value().startswith(b"POST /up HTTP/1.1\r\n"), t.value())
        clock.advance(1.9)
        self.assertIsNone(request.code)
        clock.advance(0.2)
        self.assertEqual(request.code, 504)
        self.assertTrue(t.disconnecting)
        self.assertEqual(pools.idle_connections(), 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class ProxyRetryDeadlineTests(unittest.SynchronousTestCase):
    def test_a_dial_refused_at_once_and_retried_keeps_the_deadline_on_the_retry(self):
        """A GET whose first target's dial fails synchronously is retried on
        the path's other target (inside request_into); the request timeout
        must then cancel the retry's attempt: 504, its connection aborted."""
        from nbgateway.proxy.reverse import ReverseProxy
        from nbgateway.routes.context import RequestContext
        from nbgateway.routes.paths import PathRouter, parse_target
        from nbgateway.routes.service import ProxyService, TargetOptions

        from .test_reverse_streaming import _FakeRequest

        clock = task.Clock()
        eps = FakeEndpoints()
        refused: list[str] = []

        class Dialer:
            def endpoint(self, host, port, timeout):
                if host == "100.64.0.9":
                    refused.append(host)
                    raise ConnectionRefusedError("refused at once")
                return eps.endpoint_for(host, port, False)

        proxy = ReverseProxy(clock, UpstreamPools(clock), lambda a, d: Dialer(), clock=clock)
        opts = TargetOptions(request_timeout=2.0)
        service = ProxyService("acc", "u.example", PathRouter([
            parse_target("/", "http://100.64.0.9:8080/", opts),
            parse_target("/", "http://100.64.0.8:8080/", opts)]))
        requests = []
        for _ in range(2):  # one of the two starts on the refusing target
            request = _FakeRequest(None)
            request.method = b"GET"
            proxy.render(request, RequestContext(service=service))
            requests.append(request)
        self.assertTrue(refused)  # at least one request was retried on .8
        self.assertEqual(len(eps.conns), 2)  # both requests now wait on .8
        clock.advance(2.1)
        self.assertEqual([r.code for r in requests], [504, 504])
        self.assertTrue(all(t.disconnecting for t, _ in eps.conns))
        self.assertEqual(clock.getDelayedCalls(), [])


class StrayBytesTests(Base):
    def test_bytes_after_the_response_in_the_same_read_prevent_reuse(self):
        _, sink, t, _ = self.fetch(response=OK + b"HTTP/1.1 200 OK\r\nX-Junk: 1\r\n\r\n")
        self.assertEqual(sink.data, b"hello")
        sink.reason.trap(ResponseDone)
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.pool.idle(), 0)

    def test_bytes_on_an_idle_connection_close_it(self):
        _, _, t, proto = self.fetch()
        self.assertEqual(self.pool.idle(), 1)
        proto.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(t.disconnecting)
        proto.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.pool.idle(), 0)

    def test_a_connection_paused_by_a_slow_client_reads_again_when_reused(self):
        _, sink, t, proto = self.fetch(
            response=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        sink.transport.pauseProducing()
        proto.dataReceived(b"ok")
        sink.reason.trap(ResponseDone)
        self.assertEqual(self.pool.idle(), 1)
        self.agent.request(b"GET", URL, Headers(), None)
        self.assertEqual(t.producerState, "producing")


class Sink:
    """A request_into sink: records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def upstream_response(self, response) -> None:
        self.calls.append(("response", response))

    def upstream_failed(self, reason: Failure) -> None:
        self.calls.append(("failed", reason))


class RequestIntoTests(Base):
    """The Deferred-free entry the reverse proxy uses: the same outcomes as
    request() (response, failure, cancel), each delivered exactly once."""

    def test_response_once_and_the_connection_is_pooled(self):
        sink = Sink()
        attempt = self.agent.request_into(b"GET", URL, Headers({b"X-A": [b"1"]}), None, sink)
        t, proto = self.eps.conns[-1]
        self.assertEqual(sink.calls, [])
        proto.dataReceived(OK[:20])
        self.assertEqual(sink.calls, [])
        proto.dataReceived(OK[20:])
        [(kind, resp)] = sink.calls
        self.assertEqual((kind, resp.code, resp.headers.getRawHeaders(b"x-up")),
                         ("response", 200, [b"1"]))
        body = Collect()
        resp.deliverBody(body)
        self.assertEqual(body.data, b"hello")
        attempt.cancel()  # answered already: nothing happens
        self.assertEqual(len(sink.calls), 1)
        self.assertEqual(self.pool.idle(), 1)
        self.assertEqual(t.value(),
                         b"GET /a/b?q=1 HTTP/1.1\r\nX-A: 1\r\nHost: 10.0.0.5:8080\r\n\r\n")

    def test_cancel_before_the_head_fails_with_cancelled_and_closes(self):
        sink = Sink()
        attempt = self.agent.request_into(b"GET", URL, Headers(), None, sink)
        t, proto = self.eps.conns[-1]
        attempt.cancel()
        attempt.cancel()
        [(kind, reason)] = sink.calls
        self.assertEqual(kind, "failed")
        reason.trap(defer.CancelledError)
        self.assertTrue(t.disconnected)  # aborted: the connection is not reused
        proto.dataReceived(OK)  # a late answer reaches nobody
        self.assertEqual(len(sink.calls), 1)
        self.assertEqual(self.pool.idle(), 0)

    def test_a_refused_dial_fails_before_request_into_returns(self):
        def refuse(host, port, tls):
            raise ConnectionRefusedError("guard says no")

        agent = LeanAgent(self.pool, refuse)
        sink = Sink()
        attempt = agent.request_into(b"GET", URL, Headers(), None, sink)
        [(kind, reason)] = sink.calls
        self.assertEqual(kind, "failed")
        reason.trap(ConnectionRefusedError)
        attempt.cancel()
        self.assertEqual(len(sink.calls), 1)

    def test_a_bad_url_raises(self):
        self.assertRaises(ValueError, self.agent.request_into, b"GET", b"nope", Headers(),
                          None, Sink())

    def test_stale_pooled_connection_is_retried_on_a_new_one(self):
        self.fetch()
        sink = Sink()
        self.agent.request_into(b"GET", URL, Headers(), None, sink)
        _t, proto = self.eps.conns[-1]
        proto.connectionLost(Failure(ResponseDone()))  # closed while idle, no byte
        self.assertEqual(sink.calls, [])
        self.assertEqual(len(self.eps.conns), 2)
        self.eps.conns[-1][1].dataReceived(OK)
        self.assertEqual([k for k, _ in sink.calls], ["response"])


class ResponseHeaderNameTests(Base):
    def test_names_canonical_as_twisted_keeps_them_and_long_names_not_cached(self):
        from nbgateway.dial import http11

        long_name = b"X-" + b"a" * 200
        resp, _, _, _ = self.fetch(response=(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-UP: 1\r\netag: e\r\n"
            b"www-authenticate: b\r\n" + long_name + b": v\r\n\r\nok"))
        want = Headers()
        for name, value in ((b"content-length", b"2"), (b"x-UP", b"1"), (b"etag", b"e"),
                            (b"www-authenticate", b"b"), (long_name, b"v")):
            want.addRawHeader(name, value)
        self.assertEqual(list(resp.headers.getAllRawHeaders()),
                         list(want.getAllRawHeaders()))
        self.assertNotIn(long_name, http11._NAMES)
        self.assertEqual(http11._NAMES[b"etag"], b"ETag")
