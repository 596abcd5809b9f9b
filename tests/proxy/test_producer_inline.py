"""The exchange registers the upstream body's producer with the fast path's
channel itself (``FastRequest.registerProducer``/``unregisterProducer`` for
a push producer, inline in ``_Exchange.makeConnection``/``connectionLost``):
while a body streams the channel's producer is the upstream body's (so a
client that stops reading pauses the upstream socket), the request knows it
as its producer, and both are cleared when the body ends; a second response
on the connection registers again."""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.proxy.test_lean_path import GET, Path

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\n"


class ProducerInlineTests(unittest.TestCase):
    def test_the_body_producer_is_the_channels_while_the_body_streams(self):
        path = Path()
        path.exchange(GET, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # warm
        for _ in range(2):  # the same keep-alive connections, twice
            path.client.clear()
            path.channel.dataReceived(GET)
            wire, proto = path.up.upstreams[-1]
            proto.dataReceived(HEAD + b"abc")
            channel = path.channel
            request = channel._current
            producer = channel._requestProducer
            self.assertIsNotNone(producer)
            self.assertIs(request.producer, producer)
            self.assertIs(channel._requestProducerStreaming, True)
            # the client stops reading: the upstream socket is paused, then resumed
            channel.pauseProducing()
            self.assertEqual(wire.producerState, "paused")
            channel.resumeProducing()
            self.assertEqual(wire.producerState, "producing")
            proto.dataReceived(b"defghij")
            self.assertIsNone(channel._current)
            self.assertIsNone(channel._requestProducer)
            self.assertIsNone(channel._requestProducerStreaming)
            self.assertIsNone(request.producer)
            self.assertTrue(path.client.value().endswith(b"\r\n\r\nabcdefghij"))

    def test_a_client_gone_mid_body_stops_the_upstream(self):
        path = Path()
        path.exchange(GET, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # warm
        path.channel.dataReceived(GET)
        wire, proto = path.up.upstreams[-1]
        proto.dataReceived(HEAD + b"abc")
        request = path.channel._current
        self.assertIsNotNone(request.producer)
        path.channel.connectionLost(Failure(Exception("client gone")))
        self.assertTrue(wire.disconnecting or proto._lost)
        self.assertIsNone(path.channel._current)
