"""Several targets per path through the real proxy: three twisted.web
upstreams on 127.0.0.1, one stopped and restarted; curl as the client.
Ejection timing runs on a task.Clock given to the proxy."""

from __future__ import annotations

import contextlib
import json

from google.protobuf import duration_pb2
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.routes.service import entry_from_mapping

from ._harness import EchoUpstream, ProxyHarness, curl, listen_site


class _Upstream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.resource = EchoUpstream()
        self.port, self.site = listen_site(self.resource)
        self.number = self.port.getHost().port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.number}/{self.name}"

    @defer.inlineCallbacks
    def kill(self):
        """Stop listening and drop every connection (like a killed server)."""
        yield self.port.stopListening()
        for ch in self.site.channels:
            if ch.transport is not None:
                with contextlib.suppress(AttributeError):
                    ch.transport.abortConnection()

    def restart(self) -> None:
        self.port = reactor.listenTCP(self.number, self.site, interface="127.0.0.1")

    def methods(self) -> list[str]:
        return [s["method"] for s in self.resource.seen]


class BalancedProxyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.ups = [_Upstream(n) for n in ("a", "b", "c")]
        for up in self.ups:
            self.addCleanup(lambda u=up: u.port.stopListening())
        self.h = ProxyHarness(clock=self.clock)
        self.port = self.h.listen()
        self.addCleanup(self.h.close)

    def add(self, **balancing) -> None:
        m = pb.ProxyMapping(id="svc1", account_id="acc1", domain="lb.example")
        for up in self.ups:
            pm = m.path.add(path="/", target=up.url)
            pm.options.nbgw_balancing.CopyFrom(pb.NbgwBalancing(**balancing))
        self.h.services["lb.example"] = entry_from_mapping(m).service

    def get(self, path: str = "/", *extra: str):
        return curl("-H", "Host: lb.example", *extra, f"http://127.0.0.1:{self.port}{path}")

    @defer.inlineCallbacks
    def test_round_robin_spreads_and_context_names_the_target(self):
        self.add()
        served = []
        for _ in range(6):
            status, _, body = yield self.get("/x")
            self.assertEqual(status, 200)
            served.append(json.loads(body)["uri"])
        self.assertEqual(served, ["/a/x", "/b/x", "/c/x"] * 2)
        self.assertEqual(self.h.contexts[-1].target, f"http://127.0.0.1:{self.ups[2].number}")

    @defer.inlineCallbacks
    def test_killed_target_ejected_no_failed_get_and_back_after_restart(self):
        self.add(max_failures=1, backoff=duration_pb2.Duration(seconds=10))
        b = self.ups[1]
        for _ in range(3):  # warm: keep-alive connections to all three
            status, _, _ = yield self.get("/")
            self.assertEqual(status, 200)
        yield b.kill()
        before = len(b.resource.seen)
        statuses = []
        for _ in range(9):
            status, _, _ = yield self.get("/")
            statuses.append(status)
        self.assertEqual(statuses, [200] * 9)  # the GET that hit b was retried
        self.assertEqual(len(b.resource.seen), before)
        pool = self.h.proxy.balancers.get("svc1", "/")
        st_b = pool.states[1]
        self.assertEqual(st_b.ejections_total, 1)
        self.assertFalse(pool.healthy(st_b, self.clock.seconds()))
        # b comes back: after the back-off it is in rotation again
        b.restart()
        self.clock.advance(10)
        for _ in range(3):
            status, _, _ = yield self.get("/")
            self.assertEqual(status, 200)
        self.assertEqual(len(b.resource.seen), before + 1)
        self.assertTrue(pool.healthy(st_b, self.clock.seconds()))
        self.assertFalse(st_b.probation)

    @defer.inlineCallbacks
    def test_a_retried_get_keeps_its_query(self):
        """The proxy hands the exchange the query as bytes; a retry on
        another target decodes it (the same target URI as the first try)."""
        self.add(max_failures=1, backoff=duration_pb2.Duration(seconds=10))
        for _ in range(3):  # warm: keep-alive connections to all three
            status, _, _ = yield self.get("/")
            self.assertEqual(status, 200)
        yield self.ups[1].kill()
        uris = []
        for _ in range(4):
            status, _, body = yield self.get("/x?a=1&b=%C3%A9+z")
            self.assertEqual(status, 200)
            uris.append(json.loads(body)["uri"])
        self.assertEqual(self.h.proxy.balancers.get("svc1", "/").states[1].ejections_total, 1)
        self.assertEqual(sorted(set(uris)), ["/a/x?a=1&b=%C3%A9+z", "/c/x?a=1&b=%C3%A9+z"])

    @defer.inlineCallbacks
    def test_post_to_dead_target_is_502_and_never_retried(self):
        self.add(max_failures=5)
        b, c = self.ups[1:]
        status, _, _ = yield self.get("/")  # a; b is next
        self.assertEqual(status, 200)
        yield b.kill()
        status, _, body = yield self.get("/form", "-X", "POST", "--data", "x=1")
        self.assertEqual(status, 502)
        self.assertIn(b"Service Unavailable", body)
        self.assertEqual([m for u in self.ups for m in u.methods() if m == "POST"], [])
        # PATCH neither; GET, PUT and DELETE are retried on c, then a
        status, _, _ = yield self.get("/", "-X", "PATCH", "--data", "x")  # c (b was tried)
        self.assertEqual(status, 200)
        status, _, _ = yield self.get("/", "-X", "PATCH", "--data", "x")  # a
        self.assertEqual(status, 200)
        status, _, _ = yield self.get("/", "-X", "PATCH", "--data", "x")  # b: dead
        self.assertEqual(status, 502)
        status, _, _ = yield self.get("/", "-X", "PUT", "--data", "x")  # c
        status, _, _ = yield self.get("/", "-X", "DELETE")  # a
        status, _, body = yield self.get("/", "-X", "PUT", "--data", "put-body")  # b -> c
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["body_len"], len("put-body"))
        self.assertEqual(self.h.contexts[-1].target, f"http://127.0.0.1:{c.number}")
        pool = self.h.proxy.balancers.get("svc1", "/")
        self.assertEqual(pool.states[1].failures_total, 3)

    @defer.inlineCallbacks
    def test_least_conn_skips_the_busy_target(self):
        self.add(policy="least_conn")
        a, b, c = self.ups
        pool = self.h.proxy.balancers.pool("svc1", self.h.services["lb.example"].router.match("/"))
        pool.states[0].inflight = 5  # a is busy (as if 5 requests were in flight)
        pool.states[2].inflight = 1
        for _ in range(2):
            status, _, _ = yield self.get("/")
            self.assertEqual(status, 200)
        self.assertEqual((len(a.resource.seen), len(b.resource.seen), len(c.resource.seen)),
                         (0, 2, 0))
        self.assertEqual(pool.states[1].inflight, 0)  # released when each finished
