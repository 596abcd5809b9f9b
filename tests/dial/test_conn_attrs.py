"""The lean client's upstream connection (nbgateway.dial.http11_conn) stays
under CPython 3.11's shared-keys limit of 30 own attributes (past it every
attribute access on the object, ~100 per exchange, is a dict lookup), and
what was slimmed for that keeps its behaviour: the response head bound
(checked at the head's end and after each read that leaves it incomplete,
each time only once the exchange has received more bytes than the bound),
the early body (one buffer, paused past its limit, delivered in order), the
close waiters and the dial's factory."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers

from nbgateway.dial import http11_conn
from nbgateway.dial.http11_conn import _EARLY_BODY_LIMIT, MAX_HEAD_BYTES
from tests.proxy.test_upstream_client import OK, URL, Base, Collect

CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")


def _head_with(size: int) -> bytes:
    """A 200 head whose header lines (names + values) add up to ``size``."""
    lines, left, i = [], size - len(b"Content-Length") - 1, 0
    while left > 0:
        name = b"X-F%05d" % i
        value = b"v" * min(1000, left - len(name))
        if left - len(name) - len(value) < len(name) + 1 and left > len(name) + len(value):
            value += b"v" * (left - len(name) - len(value))  # the last line takes the rest
        lines.append(name + b": " + value + b"\r\n")
        left -= len(name) + len(value)
        i += 1
    assert left == 0
    return b"HTTP/1.1 200 OK\r\n" + b"".join(lines) + b"Content-Length: 1\r\n\r\nx"


class ConnectionAttributeTests(Base):
    def test_the_connection_stays_under_the_shared_keys_limit(self):
        for response in (OK, CHUNKED, OK, CHUNKED):
            _resp, sink, _t, _proto = self.fetch(response=response)
            sink.reason.trap(ResponseDone)
        self.assertEqual(len(self.eps.conns), 1)  # one keep-alive connection
        proto = self.eps.conns[0][1]
        self.assertLess(len(vars(proto)), 30, sorted(vars(proto)))
        # the read hook is its own (read per read), the factory is not set
        self.assertIn("_read_end", vars(proto))
        self.assertNotIn("factory", vars(proto))

    def test_a_head_past_the_bound_in_one_read_fails_the_request(self):
        d = self.agent.request(b"GET", URL, Headers(), None)
        t, proto = self.eps.conns[-1]
        proto.dataReceived(_head_with(MAX_HEAD_BYTES + 1))
        self.failureResultOf(d, ResponseFailed)
        self.assertTrue(t.disconnecting or proto._lost or t.value())
        self.assertEqual(self.pool.idle(), 0)

    def test_a_head_at_the_bound_is_accepted(self):
        resp, sink, _t, _p = self.fetch(response=_head_with(MAX_HEAD_BYTES))
        self.assertEqual((resp.code, sink.data), (200, b"x"))

    def test_a_head_growing_past_the_bound_over_reads_fails_before_its_end(self):
        d = self.agent.request(b"GET", URL, Headers(), None)
        _t, proto = self.eps.conns[-1]
        head = _head_with(3 * MAX_HEAD_BYTES)
        end = head.index(b"Content-Length")
        for i in range(0, end, 4096):  # never the head's end
            proto.dataReceived(head[i:i + 4096])
            if d.called:
                break
        self.assertTrue(d.called)
        self.failureResultOf(d, ResponseFailed)
        self.assertLess(i, MAX_HEAD_BYTES + 2 * 4096)  # refused near the bound

    def test_an_interim_head_past_the_bound_fails(self):
        d = self.agent.request(b"GET", URL, Headers(), None)
        _t, proto = self.eps.conns[-1]
        interim = _head_with(MAX_HEAD_BYTES + 100).replace(b"200 OK", b"103 Early Hints", 1)
        interim = interim[:interim.index(b"Content-Length")] + b"\r\n"
        proto.dataReceived(interim)
        self.failureResultOf(d, ResponseFailed)

    def test_small_interim_heads_do_not_add_up(self):
        d = self.agent.request(b"GET", URL, Headers(), None)
        _t, proto = self.eps.conns[-1]
        interim = _head_with(MAX_HEAD_BYTES // 2).replace(b"200 OK", b"103 Early Hints", 1)
        interim = interim[:interim.index(b"Content-Length")] + b"\r\n"
        proto.dataReceived(interim * 3 + OK)
        resp = self.successResultOf(d)
        sink = Collect()
        resp.deliverBody(sink)
        self.assertEqual((resp.code, sink.data), (200, b"hello"))

    def _counting_head_checks(self):
        calls = []
        real = http11_conn._check_head_size

        def counting(headers):
            calls.append(len(headers))
            real(headers)

        self.patch(http11_conn, "_check_head_size", counting)
        return calls

    def test_header_lines_are_counted_only_past_the_bound_received(self):
        # the header lines are spans of the bytes received since the request
        # went out: within the bound, nothing to count
        calls = self._counting_head_checks()
        resp, sink, _t, proto = self.fetch()
        self.assertEqual((resp.code, sink.data, calls), (200, b"hello", []))
        # a small head whose read carries a body past the bound: counted
        # once (at the head's end), and accepted
        body = b"b" * (MAX_HEAD_BYTES + 10)
        resp, sink, _t, proto2 = self.fetch(
            response=b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertIs(proto2, proto)  # the same keep-alive connection
        self.assertEqual((resp.code, sink.data, calls), (200, body, [1]))
        # the count restarts with each exchange: the next small one is not counted
        del calls[:]
        resp, sink, _t, proto3 = self.fetch()
        self.assertIs(proto3, proto)
        self.assertEqual((resp.code, sink.data, calls), (200, b"hello", []))

    def test_a_head_past_the_bound_over_two_reads_ending_in_the_second_fails(self):
        # neither read alone is past the bound; the exchange's bytes are
        calls = self._counting_head_checks()
        d = self.agent.request(b"GET", URL, Headers(), None)
        _t, proto = self.eps.conns[-1]
        head = _head_with(MAX_HEAD_BYTES + 1)
        half = len(head) // 2
        self.assertLess(len(head) - half, MAX_HEAD_BYTES)
        proto.dataReceived(head[:half])
        self.assertNoResult(d)
        self.assertEqual(calls, [])  # under the bound received: not counted yet
        proto.dataReceived(head[half:])
        self.failureResultOf(d, ResponseFailed)
        self.assertTrue(calls)

    def test_a_head_at_the_bound_over_reads_with_a_body_is_accepted(self):
        body = b"z" * (2 * MAX_HEAD_BYTES)
        # at the bound with the body's length (6 digits, not 1) in place
        head = _head_with(MAX_HEAD_BYTES - 5)[:-1]  # without its one body byte
        response = head.replace(b"Content-Length: 1\r\n",
                                b"Content-Length: %d\r\n" % len(body)) + body
        d = self.agent.request(b"GET", URL, Headers(), None)
        _t, proto = self.eps.conns[-1]
        for i in range(0, len(response), 7000):
            proto.dataReceived(response[i:i + 7000])
        resp = self.successResultOf(d)
        sink = Collect()
        resp.deliverBody(sink)
        self.assertEqual((resp.code, sink.data), (200, body))

    def test_early_body_bytes_over_reads_are_delivered_in_order_with_backpressure(self):
        d = self.agent.request(b"GET", URL, Headers(), None)
        t, proto = self.eps.conns[-1]
        body = bytes(range(256)) * ((_EARLY_BODY_LIMIT + 4096) // 256)
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        resp = self.successResultOf(d)
        for i in range(0, len(body), 1000):  # before the consumer is attached
            proto.dataReceived(body[i:i + 1000])
        self.assertEqual(t.producerState, "paused")  # past the early limit
        sink = Collect()
        resp.deliverBody(sink)
        self.assertEqual(t.producerState, "producing")
        self.assertEqual(sink.data, body)
        sink.reason.trap(ResponseDone)
        self.assertEqual(self.pool.idle(), 1)
        # the next exchange on it starts with no early bytes
        _resp2, sink2, _t, _p = self.fetch()
        self.assertEqual(sink2.data, b"hello")

    def test_close_waiters_fire_when_the_connection_is_lost(self):
        self.fetch()
        proto = self.eps.conns[0][1]
        self.assertEqual(proto._close_waiters, ())  # made on first use
        done = self.pool.closeCachedConnections()
        self.assertNoResult(done)
        proto.connectionLost(Failure(ConnectionError()))
        self.successResultOf(done)
        self.assertEqual(proto._close_waiters, ())


def test_the_dials_factory_builds_connections_of_the_pool_and_key():
    from nbgateway.dial.http11 import ConnectionPool, _ConnectionFactory

    pool = ConnectionPool(None, 4, 90.0)
    key = (b"http", b"10.0.0.5", 8080)
    conn = _ConnectionFactory(pool, key).buildProtocol(None)
    assert isinstance(conn, http11_conn.UpstreamConnection)
    assert conn.pool is pool and conn.key == key
    conn.makeConnection(StringTransport())
    assert conn.transport is not None
