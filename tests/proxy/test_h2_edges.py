"""Edges of the HTTP/2 upstream path with a scripted upstream (the ``h2``
package's server state machine on a real socket): the request timeout on
``task.Clock`` (504, the upstream stream reset), a ``GOAWAY`` before the
answer (502, the next request on a new connection), an upstream reset after
the response head (the client's stream is reset, not a short well-formed
answer), and a response body streamed as it arrives to an HTTP/1.1 client."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from nbgateway.routes.service import TargetOptions

from ._harness import ProxyHarness, curl, wait_for

H2_DIRECT = TargetOptions(direct_upstream=True, upstream_protocol="h2", request_timeout=5.0)


class ScriptedH2(Protocol):
    """An HTTP/2 server whose answer to each request is ``factory.mode``."""

    def connectionMade(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        if self.factory.mode == "zero-window":  # the client may send no DATA yet
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        if self.factory.max_streams:
            self.conn.update_settings(
                {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.factory.max_streams})
        self.transport.write(self.conn.data_to_send())
        self.factory.connections += 1
        self.body = b""

    closed = False

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        for ev in self.conn.receive_data(data):
            self.factory.events.append(ev)
            if isinstance(ev, h2.events.RequestReceived):
                self.answer(ev.stream_id, ev.stream_ended is not None)
            elif isinstance(ev, h2.events.DataReceived):
                self.body += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif (isinstance(ev, h2.events.StreamEnded) and self.factory.mode == "zero-window"
                  and self.body):
                self.conn.send_headers(ev.stream_id, [(b":status", b"200")])
                self.conn.send_data(ev.stream_id, b"got %d" % len(self.body), end_stream=True)
            if self.closed:
                break
        self.transport.write(self.conn.data_to_send())
        if self.closed:
            self.transport.loseConnection()

    def answer(self, sid: int, no_body: bool = False) -> None:
        mode = self.factory.mode
        if mode == "silent":
            return
        if mode == "early-answer":  # the whole answer before reading the body
            self.conn.send_headers(sid, [(b":status", b"413")])
            self.conn.send_data(sid, b"too big", end_stream=True)
            return
        if mode == "zero-window" and no_body:
            self.conn.send_headers(sid, [(b":status", b"200")])
            self.conn.send_data(sid, b"warm", end_stream=True)
            return
        if mode == "zero-window":  # open the window a moment later, by SETTINGS only
            def widen() -> None:
                self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
                self.transport.write(self.conn.data_to_send())

            reactor.callLater(0.05, widen)
            return
        if mode == "goaway":
            self.conn.close_connection(last_stream_id=0)
            self.closed = True
            return
        self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
        self.conn.send_data(sid, b"first;")
        if mode == "reset-after-head":
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif mode == "slow-body":
            self.factory.pending.append((self, sid))

    def finish_slow(self, sid: int) -> None:
        self.conn.send_data(sid, b"second", end_stream=True)
        self.transport.write(self.conn.data_to_send())


class H2EdgeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.factory = Factory.forProtocol(ScriptedH2)
        self.factory.mode = "silent"
        self.factory.events = []
        self.factory.connections = 0
        self.factory.pending = []
        self.factory.max_streams = 0
        self.up = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.up.stopListening)
        self.clock = task.Clock()
        self.h = ProxyHarness(clock=self.clock)
        self.addCleanup(self.h.close)
        self.addCleanup(lambda: self.h.proxy.h2 and self.h.proxy.h2.close())
        self.h.add("app.example", {"/": f"http://127.0.0.1:{self.up.getHost().port}/"},
                   opts=H2_DIRECT)
        self.port = self.h.listen()

    def get(self, path: str = "/x") -> defer.Deferred[Any]:
        return curl("-H", "Host: app.example", f"http://127.0.0.1:{self.port}{path}")

    def events(self, kind: type) -> list[Any]:
        return [e for e in self.factory.events if isinstance(e, kind)]

    @defer.inlineCallbacks
    def test_request_timeout_is_504_and_resets_the_upstream_stream(self):
        d = self.get()
        yield wait_for(lambda: self.events(h2.events.RequestReceived), timeout=10)
        self.clock.advance(4.9)
        self.assertFalse(d.called)
        self.clock.advance(0.2)
        status, _head, body = yield d
        self.assertEqual(status, 504)
        self.assertIn(b"Request Timeout", body)
        yield wait_for(lambda: self.events(h2.events.StreamReset), timeout=10)
        self.assertEqual(self.events(h2.events.StreamReset)[0].error_code,
                         h2.errors.ErrorCodes.CANCEL)
        # no deadline left; only the idle pooled connection's close, which comes
        pools = self.h.proxy.h2.pools
        self.assertEqual([c.func.__name__ for c in self.clock.getDelayedCalls()],
                         ["_idle_close"])
        self.assertEqual(pools.open_connections(), 1)
        self.clock.advance(90)
        yield wait_for(lambda: pools.open_connections() == 0, timeout=10)

    @defer.inlineCallbacks
    def test_goaway_before_the_answer_is_502_then_a_new_connection(self):
        self.factory.mode = "goaway"
        status, _head, _body = yield self.get()
        self.assertEqual(status, 502)
        self.factory.mode = "slow-body"
        d = self.get("/again")
        yield wait_for(lambda: self.factory.pending, timeout=10)
        proto, sid = self.factory.pending[0]
        proto.finish_slow(sid)
        status, _head, body = yield d
        self.assertEqual((status, body), (200, b"first;second"))
        self.assertEqual(self.factory.connections, 2)

    @defer.inlineCallbacks
    def test_request_body_waits_for_a_window_opened_by_settings(self):
        self.factory.mode = "zero-window"
        # first a request without a body: the upstream's SETTINGS (initial
        # window 0) have arrived when the next one starts
        status, _head, answer = yield self.get("/warm")
        self.assertEqual((status, answer), (200, b"warm"))
        body = self.mktemp()
        with open(body, "wb") as f:
            f.write(b"q" * 20000)
        status, _head, answer = yield curl("-H", "Host: app.example", "--data-binary",
                                           f"@{body}", f"http://127.0.0.1:{self.port}/up")
        self.assertEqual((status, answer), (200, b"got 20000"))
        self.assertEqual(self.factory.connections, 1)

    @defer.inlineCallbacks
    def test_answer_before_the_request_body_closes_the_stream(self):
        self.factory.mode = "early-answer"
        body = self.mktemp()
        with open(body, "wb") as f:
            f.write(b"q" * 300_000)
        status, _head, answer = yield curl("-H", "Host: app.example", "--data-binary",
                                           f"@{body}", f"http://127.0.0.1:{self.port}/up")
        self.assertEqual((status, answer), (413, b"too big"))
        # our half is closed too (RST_STREAM NO_ERROR): no stream stays open
        yield wait_for(lambda: self.events(h2.events.StreamReset), timeout=10)
        self.assertEqual(self.events(h2.events.StreamReset)[0].error_code,
                         h2.errors.ErrorCodes.NO_ERROR)
        (conn,) = [c for e in self.h.proxy.h2.pools._hosts.values() for c in e.conns]
        self.assertEqual(conn.h2.open_outbound_streams, 0)
        self.assertEqual(conn.streams, {})

    @defer.inlineCallbacks
    def test_requests_wait_for_a_free_stream_at_the_upstreams_limit(self):
        from nbgateway.dial.h2 import H2Pools
        from nbgateway.proxy.h2relay import H2Relay

        # one connection allowed, the upstream allows one stream at a time
        self.h.proxy.h2 = H2Relay(self.h.proxy, H2Pools(reactor, clock=self.clock,
                                                        max_connections=1))
        self.factory.mode = "slow-body"
        self.factory.max_streams = 1
        # the first request learns the limit (SETTINGS) and holds the stream
        first = self.get("/one")
        yield wait_for(lambda: len(self.factory.pending) == 1, timeout=10)
        second = self.get("/two")
        yield wait_for(lambda: sum(len(e.waiters) for e in
                                   self.h.proxy.h2.pools._hosts.values()) == 1, timeout=10)
        self.assertEqual(len(self.events(h2.events.RequestReceived)), 1)  # not sent yet
        proto, sid = self.factory.pending[0]
        proto.finish_slow(sid)
        self.assertEqual((yield first)[::2], (200, b"first;second"))
        yield wait_for(lambda: len(self.factory.pending) == 2, timeout=10)
        proto, sid = self.factory.pending[1]
        proto.finish_slow(sid)
        self.assertEqual((yield second)[::2], (200, b"first;second"))
        self.assertEqual(self.factory.connections, 1)

    @defer.inlineCallbacks
    def test_upstream_reset_after_head_is_not_a_short_answer(self):
        self.factory.mode = "reset-after-head"
        with self.assertRaises(AssertionError) as info:  # curl fails: incomplete response
            yield self.get()
        self.assertIn("curl failed", str(info.exception))

    @defer.inlineCallbacks
    def test_body_streamed_as_it_arrives(self):
        self.factory.mode = "slow-body"
        got: list[bytes] = []

        from twisted.web.client import Agent

        agent = Agent(reactor)
        from twisted.web.http_headers import Headers

        resp = yield agent.request(b"GET", f"http://127.0.0.1:{self.port}/s".encode(),
                                   Headers({b"host": [b"app.example"]}))

        class Collect(Protocol):
            def dataReceived(self, data: bytes) -> None:
                got.append(data)

            def connectionLost(self, reason: Any) -> None:
                done.callback(None)

        done: defer.Deferred[None] = defer.Deferred()
        resp.deliverBody(Collect())
        # the first DATA frame reached the client while the upstream still holds the rest
        yield wait_for(lambda: b"".join(got) == b"first;", timeout=10)
        proto, sid = self.factory.pending[0]
        proto.finish_slow(sid)
        yield done
        self.assertEqual(b"".join(got), b"first;second")
        self.assertEqual(resp.code, 200)
