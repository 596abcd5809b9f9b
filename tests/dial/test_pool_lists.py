"""A target's list of idle connections stays in the pool while its one
connection is out (taken by a request, given back on release: no list made
and dropped per request), the idle sweep drops the lists left empty, and
``send_head``'s inline take skips lost connections as ``take`` does."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from nbgateway.dial.http11 import ConnectionPool, LeanAgent, split_url
from tests.proxy.test_upstream_client import OK, URL, Collect, FakeEndpoints

OTHER = b"http://10.0.0.6:8080/"
KEY = split_url(URL)[:3]


class _Sink:
    def __init__(self) -> None:
        self.response = None
        self.failure = None

    def upstream_response(self, response) -> None:
        self.response = response

    def upstream_failed(self, failure) -> None:
        self.failure = failure


class PoolListTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.pool = ConnectionPool(self.clock, 4, 90.0)
        self.eps = FakeEndpoints()
        self.agent = LeanAgent(self.pool, self.eps.endpoint_for)

    def fetch(self, url: bytes = URL):
        waiting = {id(p) for _t, p in self.eps.conns if p._d is not None}
        d: defer.Deferred = self.agent.request(b"GET", url, Headers(), None)
        # the connection the request went out on (kept or new): the one
        # now waiting for a response head
        [proto] = [p for _t, p in self.eps.conns if p._d is not None and id(p) not in waiting]
        self.assertNoResult(d)
        return d, proto

    def answer(self, d, proto) -> None:
        proto.dataReceived(OK)
        self.successResultOf(d).deliverBody(Collect())

    def send_head(self):
        sink = _Sink()
        head = b"GET /a HTTP/1.1\r\nHost: 10.0.0.5:8080\r\n\r\n"
        attempt = self.agent.send_head(b"GET", KEY, head, None, sink)
        return attempt, sink

    def test_the_list_stays_while_its_connection_is_out(self):
        d, proto = self.fetch()
        self.answer(d, proto)
        conns = self.pool._connections[KEY]
        self.assertEqual(conns, [proto])
        for _ in range(3):
            d, again = self.fetch()
            self.assertIs(again, proto)  # the kept connection, no new dial
            self.assertIs(self.pool._connections[KEY], conns)  # taken: still there, empty
            self.assertEqual(conns, [])
            self.assertEqual(self.pool.idle(), 0)
            self.answer(d, proto)
            self.assertIs(self.pool._connections[KEY], conns)
            self.assertEqual(conns, [proto])
        self.assertEqual(len(self.eps.dials), 1)

    def test_the_sweep_drops_empty_lists(self):
        d, proto = self.fetch()
        self.answer(d, proto)
        d2, other = self.fetch(OTHER)
        self.answer(d2, other)
        d, again = self.fetch()  # URL's connection out again: its list empty
        self.assertIs(again, proto)
        self.clock.advance(91)  # OTHER's idle connection is due
        self.assertTrue(self.eps.conns[1][0].disconnecting)
        self.assertEqual(self.pool._connections, {})  # both lists gone (one emptied, one swept)
        self.answer(d, proto)  # the connection out comes back: a new list
        self.assertEqual(self.pool._connections, {KEY: [proto]})
        self.assertEqual(self.pool.idle(), 1)

    def test_send_head_takes_a_kept_connection_and_skips_lost_ones(self):
        d1, p1 = self.fetch()
        d2, p2 = self.fetch()  # concurrent: a second connection
        self.answer(d1, p1)
        self.answer(d2, p2)
        self.assertEqual(self.pool._connections[KEY], [p1, p2])
        p2.connectionLost()  # lost while idle: forgotten (the list keeps p1)
        self.assertEqual(self.pool._connections[KEY], [p1])
        p1._lost = True  # lost without being forgotten yet: skipped by the take
        attempt, sink = self.send_head()
        self.assertEqual(len(self.eps.dials), 3)  # a new dial
        self.assertEqual(self.pool._connections[KEY], [])
        _t, p3 = self.eps.conns[-1]
        self.assertIs(attempt.conn, p3)
        p3.dataReceived(OK)
        self.assertEqual(sink.response.code, 200)
        sink.response.deliverBody(Collect())
        attempt2, _sink2 = self.send_head()
        self.assertIs(attempt2.conn, p3)  # the kept one, taken inline
        self.assertEqual(len(self.eps.dials), 3)
