"""The lean client's pool closes each idle connection exactly
``cachedConnectionTimeout`` after it went idle, with one sweep deadline per
pool instead of a timer entry per pooled request."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from nbgateway.dial.deadlines import Deadlines
from nbgateway.dial.http11 import ConnectionPool, LeanAgent
from tests.proxy.test_upstream_client import OK, URL, Collect, FakeEndpoints

OTHER = b"http://10.0.0.6:8080/"


class IdleSweepTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.pool = ConnectionPool(self.clock, 4, 90.0)
        self.eps = FakeEndpoints()
        self.agent = LeanAgent(self.pool, self.eps.endpoint_for)

    def start(self, url: bytes = URL) -> tuple[defer.Deferred, object]:
        d = self.agent.request(b"GET", url, Headers(), None)
        return d, self.eps.conns[-1]

    def answer(self, d: defer.Deferred, conn) -> None:
        conn[1].dataReceived(OK)
        self.successResultOf(d).deliverBody(Collect())

    def test_each_connection_closes_at_its_own_idle_time(self):
        # three connections (two targets), idle from t=0, 10 and 30
        d1, c1 = self.start()
        d2, c2 = self.start()  # concurrent: a second connection to URL
        d3, c3 = self.start(OTHER)
        self.answer(d1, c1)
        self.clock.advance(10)
        self.answer(d2, c2)
        self.clock.advance(20)
        self.answer(d3, c3)
        self.assertEqual(self.pool.idle(), 3)
        self.clock.advance(59.9)  # t = 89.9
        self.assertEqual([c[0].disconnecting for c in (c1, c2, c3)], [False] * 3)
        self.clock.advance(0.1)  # t = 90: the first one is due
        self.assertEqual([c[0].disconnecting for c in (c1, c2, c3)], [True, False, False])
        self.clock.advance(9.9)
        self.assertFalse(c2[0].disconnecting)
        self.clock.advance(0.1)  # t = 100
        self.assertEqual([c[0].disconnecting for c in (c2, c3)], [True, False])
        self.clock.advance(20)  # t = 120
        self.assertTrue(c3[0].disconnecting)
        self.assertEqual(self.pool.idle(), 0)
        for _t, proto in (c1, c2, c3):
            proto.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_reused_connection_gets_a_fresh_idle_time(self):
        d, conn = self.start()
        self.answer(d, conn)
        self.clock.advance(80)
        d = self.agent.request(b"GET", URL, Headers(), None)  # the pooled one
        self.assertEqual(len(self.eps.conns), 1)
        self.clock.advance(15)  # t = 95: busy, not idle; the sweep finds nothing due
        self.assertFalse(conn[0].disconnecting)
        self.answer(d, conn)  # idle again from t = 95
        self.clock.advance(89.9)
        self.assertFalse(conn[0].disconnecting)
        self.clock.advance(0.1)  # t = 185
        self.assertTrue(conn[0].disconnecting)

    def test_one_timer_entry_for_many_pooled_requests(self):
        deadlines = Deadlines(self.clock)
        pool = ConnectionPool(self.clock, 4, 90.0, deadlines)
        agent = LeanAgent(pool, self.eps.endpoint_for)
        for _ in range(100):
            d = agent.request(b"GET", URL, Headers(), None)
            self.answer(d, self.eps.conns[-1])
            self.clock.advance(0.01)
        self.assertEqual(len(self.eps.conns), 1)
        self.assertEqual(len(deadlines), 1)  # the sweep, not one per request
        self.assertEqual(deadlines.armed, 1)

    def test_a_lost_idle_connection_leaves_the_pool_and_the_sweep_ends(self):
        d, conn = self.start()
        self.answer(d, conn)
        conn[1].connectionLost(Failure(ConnectionError("reset while idle")))
        self.assertEqual(self.pool.idle(), 0)
        self.clock.advance(90)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closing_the_pool_cancels_the_sweep(self):
        d, conn = self.start()
        self.answer(d, conn)
        done = self.pool.closeCachedConnections()
        self.assertTrue(conn[0].disconnecting)
        conn[1].connectionLost(Failure(ConnectionError()))
        self.successResultOf(done)
        self.assertEqual(self.clock.getDelayedCalls(), [])
