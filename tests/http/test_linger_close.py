"""Lingering close: a response that ends before its request body did (an
early 413, a refusal) half-closes the connection, discards the rest of the
body within bounds and then closes, instead of closing with the client's
bytes still arriving (the peer's TCP would answer with a reset, which can
destroy the response before the client reads it).  Both server paths (the
fast path and twisted.web's), on task.Clock, and over the kernel's TCP."""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import resource

from nbgateway.proxy.fast import FastHTTPChannel
from nbgateway.proxy.streaming import (
    LINGER_MAX_BYTES,
    LINGER_TIMEOUT,
    STREAM_THRESHOLD,
    ProxySite,
)

from .test_fast_path import _FastNever

BODY = STREAM_THRESHOLD + 100_000
HEAD = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % BODY


class HalfClosing(StringTransport):
    """StringTransport with a write half that can be closed."""

    write_closed = False
    resumed = 0

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def resumeProducing(self) -> None:
        self.resumed += 1
        super().resumeProducing()


class _Refuse(resource.Resource):
    """twisted.web path: answers 413 at once, never reading the body."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(413)
        request.setHeader(b"connection", b"close")
        return b"too large"


class _FastRefuse(_Refuse):
    """The same, served by the fast path."""

    fast_protocol = FastHTTPChannel

    @staticmethod
    def fast_route(host: bytes) -> bool:
        return True


def _refuse_fast(res: _FastNever) -> None:
    request = res.requests[-1]
    request.setResponseCode(413)
    request.setHeader(b"content-length", b"9")
    request.write(b"too large")
    request.finish()


class LingerTests(unittest.TestCase):
    def make(self, fast: bool) -> tuple[task.Clock, Any, HalfClosing, Any]:
        clock = task.Clock()
        res = _FastNever() if fast else _Refuse()
        site = ProxySite(res, reactor=clock, timeout=100, header_timeout=100, fast=fast)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        self.assertEqual(isinstance(channel, FastHTTPChannel) and channel.fast, fast)
        transport = HalfClosing(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
        channel.makeConnection(transport)
        channel.dataReceived(HEAD + b"x" * 1000)
        if fast:
            _refuse_fast(res)
        return clock, channel, transport, res

    def check_lingers(self, fast: bool) -> None:
        clock, channel, transport, _res = self.make(fast)
        self.assertIn(b" 413 ", transport.value().split(b"\r\n", 1)[0])
        self.assertTrue(transport.write_closed)  # FIN after the response
        self.assertFalse(transport.disconnecting)  # not closed under the client's bytes
        self.assertGreaterEqual(transport.resumed, 1)  # and still reading them
        sent = transport.value()
        for _ in range(20):  # the rest of the body: dropped, nothing answered
            channel.dataReceived(b"y" * 4096)
        self.assertEqual(transport.value(), sent)
        clock.advance(LINGER_TIMEOUT - 0.01)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.01)
        self.assertTrue(transport.disconnecting)  # closed at the bound
        channel.dataReceived(b"z" * 100)  # still dropped until the close completes
        self.assertEqual(transport.value(), sent)
        channel.connectionLost(Exception("done"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_fast_path_lingers_after_an_early_response(self):
        self.check_lingers(fast=True)

    def test_twisted_web_path_lingers_after_an_early_response(self):
        self.check_lingers(fast=False)

    def test_the_byte_bound_closes_at_once(self):
        for fast in (True, False):
            clock, channel, transport, _res = self.make(fast)
            channel.dataReceived(b"y" * (LINGER_MAX_BYTES // 2))
            self.assertFalse(transport.disconnecting)
            channel.dataReceived(b"y" * (LINGER_MAX_BYTES // 2 + 1))
            self.assertTrue(transport.disconnecting)
            self.assertEqual([c for c in clock.getDelayedCalls() if c.active()
                              and c.func == channel._linger_over], [])

    def test_the_client_closing_ends_the_linger(self):
        clock, channel, _transport, _res = self.make(fast=True)
        self.assertEqual([c.func for c in clock.getDelayedCalls()], [channel._linger_over])
        channel.connectionLost(Exception("client closed"))
        self.assertEqual([c for c in clock.getDelayedCalls() if c.func == channel._linger_over],
                         [])

    def test_a_complete_body_closes_at_once(self):
        """No body left: a non-persistent connection closes as before."""
        for fast in (True, False):
            clock = task.Clock()
            res = _FastNever() if fast else _Refuse()
            site = ProxySite(res, reactor=clock, timeout=100, header_timeout=100, fast=fast)
            channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
            transport = HalfClosing(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
            channel.makeConnection(transport)
            channel.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                                 b"Content-Length: 3\r\n\r\nabc")
            if fast:
                _refuse_fast(res)
            self.assertTrue(transport.disconnecting)
            self.assertFalse(transport.write_closed)

    def test_idle_timeout_of_a_stalled_body_does_not_linger(self):
        clock, _channel, transport, _res = self.make_streaming()
        clock.advance(100)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.write_closed)

    def make_streaming(self) -> tuple[task.Clock, Any, HalfClosing, Any]:
        clock = task.Clock()
        res = _FastNever()
        site = ProxySite(res, reactor=clock, timeout=100, header_timeout=100)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = HalfClosing(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
        channel.makeConnection(transport)
        channel.dataReceived(HEAD)
        return clock, channel, transport, res


def _post_and_read(port: int) -> tuple[bytes, str]:
    """Send the head and the start of the body, read the server's whole
    answer (it ends the response early), then send the rest of the body in
    pieces: returns the answer and the error the sends met ("" if none; a
    server that closed under the client's bytes answers them with a reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(HEAD + b"x" * 1000)
        data = b""
        while True:  # the answer, up to the server's FIN
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        error = ""
        try:
            for _ in range(8):
                s.sendall(b"x" * ((BODY - 1000) // 8))
                time.sleep(0.05)  # any reset arrives meanwhile
        except OSError as exc:
            error = type(exc).__name__
        return data, error


class KernelTCPTests(unittest.TestCase):
    """Over the kernel's TCP: the early 413 is read, and the rest of the body
    is taken without a reset (before: the closed socket answered with one)."""

    timeout = 120

    @defer.inlineCallbacks
    def test_early_413_then_the_body_without_a_reset(self):
        for fast in (True, False):
            res = _FastRefuse() if fast else _Refuse()
            site = ProxySite(res, timeout=30, header_timeout=30, fast=fast)
            port = reactor.listenTCP(0, site, interface="127.0.0.1")
            try:
                data, error = yield threads.deferToThread(_post_and_read, port.getHost().port)
                self.assertTrue(data.startswith(b"HTTP/1.1 413 "), data[:80])
                self.assertTrue(data.endswith(b"too large"), data[-80:])
                self.assertEqual(error, "", f"fast={fast}")
            finally:
                yield port.stopListening()
