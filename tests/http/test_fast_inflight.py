"""The per-account bound on exchanges in flight on the HTTP/1.1 fast path:
its request releases the account's count when the response ends (its
``finish_hooks``, not a ``notifyFinish`` Deferred) and when the client goes
away first; past the bound the answer is 503."""

from __future__ import annotations

import socket

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web import server

from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.http.site import GatewayResource
from nbgateway.proxy.fast import FastHTTPChannel
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.routes.service import entry_from_mapping
from tests.http.test_fast_path import RecordingSite, Upstream, _Factory, mapping


class HoldingUpstream(Upstream):
    """``/hold`` is never answered (until the test ends); the rest as Upstream."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list = []

    def render(self, request):
        if request.path == b"/hold":
            self.held.append(request)
            return server.NOT_DONE_YET
        return super().render(request)


class FastInflightTests(unittest.TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.upstream = HoldingUpstream()
        self.up_port = reactor.listenTCP(0, server.Site(self.upstream), interface="127.0.0.1")
        port = self.up_port.getHost().port
        self.entries = {m.domain: entry_from_mapping(m) for m in (mapping(port, "app.example"),)}
        self.pools = UpstreamPools(reactor)
        self.proxy = ReverseProxy(reactor, self.pools, lambda a, d: DirectDialer(reactor),
                                  max_inflight=1)
        res = GatewayResource(lookup=self.entries.get, proxy=self.proxy, gate=None)
        self.site = RecordingSite(res, fast=True)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.pools.close()
        yield self.port.stopListening()
        yield self.up_port.stopListening()
        for ch in self.site.channels:
            if ch.transport is not None and not ch.transport.disconnected:
                ch.transport.abortConnection()

    @defer.inlineCallbacks
    def exchange(self, payload: bytes):
        f = _Factory(payload)
        reactor.connectTCP("127.0.0.1", self.port.getHost().port, f)
        raw = yield f.done
        return raw

    @defer.inlineCallbacks
    def test_each_response_releases_its_slot(self):
        payload = b"".join(b"GET /%d HTTP/1.1\r\nHost: app.example\r\n\r\n" % i for i in range(5))
        payload += b"GET /last HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
        raw = yield self.exchange(payload)
        self.assertEqual(raw.count(b"HTTP/1.1 200 OK\r\n"), 6, raw)
        ch = self.site.channels[-1]
        self.assertIsInstance(ch, FastHTTPChannel)
        self.assertEqual(ch.fast_requests, 6)
        self.assertEqual(self.proxy.inflight, {})

    @defer.inlineCallbacks
    def test_a_slow_exchange_holds_the_slot_until_its_client_goes(self):
        held = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.addCleanup(held.close)
        held.sendall(b"GET /hold HTTP/1.1\r\nHost: app.example\r\n\r\n")
        for _ in range(300):
            if self.upstream.held:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(self.upstream.held), 1)
        self.assertEqual(list(self.proxy.inflight.values()), [1])
        raw = yield self.exchange(b"GET / HTTP/1.1\r\nHost: app.example\r\n"
                                  b"Connection: close\r\n\r\n")
        self.assertTrue(raw.startswith(b"HTTP/1.1 503 "), raw)
        held.close()  # the client goes away before its answer
        for _ in range(300):
            if not self.proxy.inflight:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.proxy.inflight, {})
