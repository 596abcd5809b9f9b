"""``Upgrade`` (WebSocket) on a path with several targets: a refused dial goes
to another target, the verdicts feed passive health; real sockets."""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.routes.service import entry_from_mapping

from ._harness import ProxyHarness, listen_protocol, wait_for
from .test_upgrade import WsClient, WsEcho, frame


class UpgradeBalanceTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        WsEcho.instances = []
        self.clock = task.Clock()
        self.live = listen_protocol(WsEcho)
        self.addCleanup(self.live.stopListening)
        dead = listen_protocol(WsEcho)
        self.dead_port = dead.getHost().port
        yield dead.stopListening()  # nothing listens there any more: refused
        self.h = ProxyHarness(clock=self.clock)
        self.port = self.h.listen()
        self.addCleanup(self.h.close)

    def add(self, *ports: int, **balancing) -> None:
        m = pb.ProxyMapping(id="ws1", account_id="acc1", domain="ws.example")
        for port in ports:
            pm = m.path.add(path="/", target=f"http://127.0.0.1:{port}/")
            pm.options.nbgw_balancing.CopyFrom(pb.NbgwBalancing(**balancing))
        self.h.services["ws.example"] = entry_from_mapping(m).service

    def connect(self, client: WsClient):
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)

    @defer.inlineCallbacks
    def test_refused_dial_goes_to_the_next_target(self):
        self.add(self.dead_port, self.live.getHost().port, max_failures=1)
        client = WsClient("ws.example")
        yield self.connect(client)
        yield wait_for(lambda: client.head is not None)
        self.assertTrue(client.head.startswith(b"HTTP/1.1 101"), client.head)
        client.transport.write(frame(1, b"hello", mask=True))
        yield wait_for(lambda: client.frames)
        self.assertEqual(client.frames[0], (1, b"hello"))
        pool = self.h.proxy.balancers.get("ws1", "/")
        dead, live = pool.states
        self.assertEqual((dead.failures_total, dead.ejections_total), (1, 1))
        self.assertFalse(pool.healthy(dead, self.clock.seconds()))
        self.assertEqual((live.requests, live.failures_total, live.inflight), (1, 0, 0))
        self.assertEqual(self.h.contexts[-1].target, f"http://127.0.0.1:{self.live.getHost().port}")
        # the dead one is out of rotation: the next upgrade goes straight to live
        client2 = WsClient("ws.example")
        yield self.connect(client2)
        yield wait_for(lambda: client2.head is not None)
        self.assertTrue(client2.head.startswith(b"HTTP/1.1 101"))
        self.assertEqual(dead.requests, 1)
        for c in (client, client2):
            c.transport.write(frame(8, b"", mask=True))
            yield c.closed

    @defer.inlineCallbacks
    def test_every_target_dead_is_502_after_one_try_each(self):
        other = listen_protocol(WsEcho)
        other_port = other.getHost().port
        yield other.stopListening()
        self.add(self.dead_port, other_port, max_failures=5)
        client = WsClient("ws.example")
        yield self.connect(client)
        yield wait_for(lambda: client.head is not None)
        self.assertTrue(client.head.startswith(b"HTTP/1.1 502"), client.head)
        pool = self.h.proxy.balancers.get("ws1", "/")
        self.assertEqual([s.requests for s in pool.states], [1, 1])
        self.assertEqual([s.failures_total for s in pool.states], [1, 1])
        self.assertEqual([s.inflight for s in pool.states], [0, 0])
        client.transport.loseConnection()
