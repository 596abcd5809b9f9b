"""The fast path's idle timeout on a keep-alive connection, on task.Clock:
the connection closes exactly ``timeout`` seconds after the last response
ended or the last bytes arrived (whichever is later), never while a request
is served, and a stalled request body counts as idle.  The idle timer is
not reset per served request: the response's end is recorded and a timer
that fires before the idle time is over waits the rest (the closing times
above are those of a reset per response)."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.base import DelayedCall
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from nbgateway.proxy.streaming import STREAM_THRESHOLD

from .test_fast_path import _FastNever, never_channel

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
T = 10.0


class IdleTimeoutTests(unittest.TestCase):
    def make(self, **kw: Any) -> tuple[task.Clock, Any, StringTransport, _FastNever]:
        kw.setdefault("timeout", T)
        kw.setdefault("header_timeout", 1000)
        return never_channel(**kw)

    @staticmethod
    def answer(res: _FastNever, i: int = -1) -> None:
        request = res.requests[i]
        request.setHeader(b"content-length", b"2")
        request.write(b"ok")
        request.finish()

    def closes_at(self, clock: task.Clock, transport: StringTransport, at: float) -> None:
        """The connection is open until just before ``at`` and closed at ``at``."""
        clock.advance(at - 0.001 - clock.seconds())
        self.assertFalse(transport.disconnecting, f"closed before {at}")
        clock.advance(0.001)
        self.assertTrue(transport.disconnecting, f"not closed at {at}")

    def test_never_used_connection(self):
        clock, _channel, transport, _res = self.make()
        self.closes_at(clock, transport, T)

    def test_keep_alive_idle_counts_from_the_response_end(self):
        clock, channel, transport, res = self.make()
        clock.advance(2)
        channel.dataReceived(GET)
        clock.advance(3)
        self.answer(res)
        self.closes_at(clock, transport, 5 + T)

    def test_a_request_longer_than_the_timeout(self):
        clock, channel, transport, res = self.make()
        clock.advance(4)
        channel.dataReceived(GET)
        clock.advance(27)
        self.assertFalse(transport.disconnecting)
        self.answer(res)
        self.closes_at(clock, transport, 31 + T)

    def test_requests_one_after_another(self):
        clock, channel, transport, res = self.make()
        for i in range(5):
            clock.advance(7)
            channel.dataReceived(GET)
            clock.advance(1 + i * 4)  # some answers slower than the timeout
            self.answer(res)
        self.assertEqual(len(res.requests), 5)
        self.closes_at(clock, transport, clock.seconds() + T)

    def test_pipelined_requests(self):
        clock, channel, transport, res = self.make()
        channel.dataReceived(GET + GET)
        clock.advance(4)
        self.answer(res, 0)
        self.assertEqual(len(res.requests), 2)
        clock.advance(12)
        self.answer(res, 1)
        self.closes_at(clock, transport, 16 + T)

    def test_next_request_arrives_after_the_response_while_idle(self):
        clock, channel, transport, res = self.make()
        channel.dataReceived(GET)
        self.answer(res)
        clock.advance(9)
        channel.dataReceived(GET)  # in flight until 30
        clock.advance(21)
        self.answer(res)
        self.closes_at(clock, transport, 30 + T)

    def test_a_trickling_head_is_activity(self):
        clock, channel, transport, _res = self.make()
        for t, part in ((6, b"GET / HT"), (12, b"TP/1.1\r\n"), (18, b"Host: a\r\n")):
            clock.advance(t - clock.seconds())
            channel.dataReceived(part)
        self.closes_at(clock, transport, 18 + T)

    def test_a_stalled_request_body_is_idle(self):
        clock, channel, transport, res = self.make()
        length = STREAM_THRESHOLD + 10
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                             % length)
        self.assertEqual(len(res.requests), 1)  # streamed: dispatched at once
        clock.advance(6)
        channel.dataReceived(b"x" * 100)
        self.closes_at(clock, transport, 6 + T)

    def test_no_timer_reset_per_served_request(self):
        clock, channel, _transport, res = self.make()
        resets = []
        original = DelayedCall.reset

        def counting(call: DelayedCall, seconds: float) -> None:
            resets.append(seconds)
            original(call, seconds)

        self.patch(DelayedCall, "reset", counting)
        for _ in range(10):
            channel.dataReceived(GET)
            clock.advance(1)
            self.answer(res)
        self.assertEqual(len(res.requests), 10)
        self.assertEqual(resets, [])  # (it was one per request before round 10)
        self.closes_at(clock, _transport, clock.seconds() + T)
