"""The lean client's response head goes into its ``Headers`` dict as llhttp
reports each line (``UpstreamConnection.on_header``), not through a list of
pairs walked at the head's end: interim heads leave nothing behind, a
chunked body's trailers are dropped (never added to the response's headers,
not even under a name the head has), and each exchange on a kept connection
starts from an empty dict."""

from __future__ import annotations

from twisted.internet import task
from twisted.trial import unittest
from twisted.web._newclient import ResponseDone
from twisted.web.http_headers import Headers

from nbgateway.dial.http11 import ConnectionPool, LeanAgent
from tests.proxy.test_upstream_client import URL, Collect, FakeEndpoints

CHUNKED_WITH_TRAILERS = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"head\"\r\n"
    b"Trailer: ETag, X-Checksum\r\n\r\n3\r\nabc\r\n0\r\nETag: \"trailer\"\r\n"
    b"X-Checksum: 42\r\n\r\n")
EMPTY_CHUNKED_WITH_TRAILERS = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n"
    b"0\r\nX-Up: trailer\r\nX-Late: 1\r\n\r\n")


class HeadDictTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.pool = ConnectionPool(task.Clock(), 4, 90.0)
        self.eps = FakeEndpoints()
        self.agent = LeanAgent(self.pool, self.eps.endpoint_for)

    def fetch(self, *parts: bytes):
        d = self.agent.request(b"GET", URL, Headers(), None)
        _t, proto = self.eps.conns[-1]
        for part in parts:
            proto.dataReceived(part)
        response = self.successResultOf(d)
        sink = Collect()
        response.deliverBody(sink)
        sink.reason.trap(ResponseDone)
        return response, sink, proto

    def test_trailers_are_not_added_to_the_response_headers(self):
        response, sink, _proto = self.fetch(CHUNKED_WITH_TRAILERS)
        self.assertEqual(sink.data, b"abc")
        self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'"head"'])
        self.assertFalse(response.headers.hasHeader(b"x-checksum"))

    def test_trailers_of_an_empty_chunked_body_in_the_heads_read(self):
        # the whole message in one read: the trailers are parsed before the
        # body is delivered (a relay writes the head only then)
        response, sink, _proto = self.fetch(EMPTY_CHUNKED_WITH_TRAILERS)
        self.assertEqual(sink.data, b"")
        self.assertEqual(response.headers.getRawHeaders(b"x-up"), [b"1"])
        self.assertFalse(response.headers.hasHeader(b"x-late"))

    def test_each_exchange_on_a_kept_connection_starts_empty(self):
        first, _sink, proto = self.fetch(CHUNKED_WITH_TRAILERS)
        second, sink, proto2 = self.fetch(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Second: 1\r\n\r\nok")
        self.assertIs(proto2, proto)  # one keep-alive connection
        self.assertEqual(sink.data, b"ok")
        self.assertEqual(sorted(second.headers._rawHeaders),
                         [b"Content-Length", b"X-Second"])
        self.assertIsNot(second.headers._rawHeaders, first.headers._rawHeaders)
        self.assertEqual(first.headers.getRawHeaders(b"etag"), [b'"head"'])

    def test_interim_heads_leave_nothing_in_the_final_head(self):
        response, sink, _proto = self.fetch(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok")
        self.assertEqual((response.code, sink.data), (200, b"ok"))
        self.assertFalse(response.headers.hasHeader(b"link"))
        self.assertEqual(response.headers.getRawHeaders(b"x-final"), [b"1"])

    def test_repeated_names_in_any_spelling_keep_their_order(self):
        response, _sink, _proto = self.fetch(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\ncontent-length: 0\r\n"
            b"set-cookie: b=2\r\nSET-COOKIE: c=3\r\n\r\n")
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"),
                         [b"a=1", b"b=2", b"c=3"])
