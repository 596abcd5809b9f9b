"""One pooled upstream connection carries a sequence of different responses
(interim 100, chunked with trailers, content-length, 204, a split head) with
its llhttp parser kept between exchanges; each response is read whole and
correct, and the connection stays the only one."""

from __future__ import annotations

from twisted.internet import task
from twisted.trial import unittest
from twisted.web._newclient import ResponseDone
from twisted.web.http_headers import Headers

from nbgateway.dial.http11 import ConnectionPool, LeanAgent
from tests.proxy.test_upstream_client import URL, Collect, FakeEndpoints

RESPONSES = [
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"], 200, b"hello"),
    ([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"],
     201, b"ok"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n"
      b"X-Trailer: 1\r\n\r\n"], 200, b"abcde"),
    ([b"HTTP/1.1 204 No Content\r\n\r\n"], 204, b""),
    ([b"HTTP/1.1 404 Not", b" Found\r\nContent-Le", b"ngth: 3\r\n\r\nn", b"o!"], 404, b"no!"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], 200, b""),
]


class ReuseTests(unittest.SynchronousTestCase):
    def test_a_pooled_connection_parses_a_sequence_of_responses(self):
        pool = ConnectionPool(task.Clock(), 4, 90.0)
        eps = FakeEndpoints()
        agent = LeanAgent(pool, eps.endpoint_for)
        for round_ in range(2):
            for parts, code, body in RESPONSES:
                d = agent.request(b"GET", URL, Headers(), None)
                transport, proto = eps.conns[-1]
                transport.clear()
                for part in parts:
                    proto.dataReceived(part)
                response = self.successResultOf(d)
                self.assertEqual(response.code, code, (round_, parts))
                sink = Collect()
                response.deliverBody(sink)
                self.assertEqual(sink.data, body)
                self.assertIsNotNone(sink.reason)
                sink.reason.trap(ResponseDone)
                self.assertEqual(pool.idle(), 1)
        self.assertEqual(len(eps.dials), 1)
        self.assertFalse(eps.conns[-1][0].disconnecting)
