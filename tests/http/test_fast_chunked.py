"""A chunked upstream response on the HTTP/1.1 fast path
(``FastRequest._send``): the bytes of one upstream read leave in one client
transport write, and when the upstream message ends in that read the
``0\\r\\n\\r\\n`` terminator goes with them (one TLS record, one segment).

The gateway's real resource, reverse proxy and lean upstream client
(:mod:`nbgateway.dial.http11`) run over in-memory transports on task.Clock;
the test plays the upstream by feeding its response bytes read by read."""

from __future__ import annotations

from typing import Any

import httptools
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.http.site import GatewayResource
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping
from tests.lean_upstreams import InMemoryPools

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
REQUEST = b"GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n"


class ClientWire(StringTransport):
    """The client's connection: every transport write recorded."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "100.64.0.2", 40000),
                         hostAddress=IPv4Address("TCP", "100.64.0.1", 80))
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))


def parse(raw: bytes) -> tuple[int, bytes, bool]:
    """Status, body and whether the response was complete, as a client reads it."""

    class P:
        body = b""
        done = False

        def on_body(self, data: bytes) -> None:
            self.body += data

        def on_message_complete(self) -> None:
            self.done = True

    p = P()
    parser = httptools.HttpResponseParser(p)
    parser.feed_data(raw)
    return parser.get_status_code(), p.body, p.done


class ChunkedResponseWriteTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        clock = task.Clock()
        m = pb.ProxyMapping(id="svc", account_id="acct", domain="app.example", path=[
            pb.PathMapping(path="/", target="http://127.0.0.1:8081/",
                           options=pb.PathTargetOptions(direct_upstream=True))])
        entries = {m.domain: entry_from_mapping(m)}
        self.pools = InMemoryPools(clock, 4)
        proxy = ReverseProxy(clock, self.pools, lambda a, d: object(), clock=clock)
        res = GatewayResource(lookup=entries.get, proxy=proxy, gate=None, clock=clock)
        site = ProxySite(res, reactor=clock)
        self.channel = site.buildProtocol(IPv4Address("TCP", "100.64.0.2", 40000))
        self.wire = ClientWire()
        self.channel.makeConnection(self.wire)

    def request(self) -> Any:
        """Send a request; the upstream connection's protocol (request seen)."""
        self.channel.dataReceived(REQUEST)
        wire, proto = self.pools.upstreams[-1]
        self.assertIn(b"GET /x HTTP/1.1\r\n", wire.value())
        wire.clear()
        self.assertEqual(self.wire.writes, [])
        return proto

    def test_whole_response_in_one_read_is_one_write(self):
        proto = self.request()
        proto.dataReceived(HEAD + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        self.assertEqual(len(self.wire.writes), 1, self.wire.writes)
        out = self.wire.writes[0]
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"\r\nTransfer-Encoding: chunked\r\n", out)
        self.assertTrue(out.endswith(b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), out)
        self.assertEqual(parse(out), (200, b"hello world", True))
        self.assertEqual(self.channel.fast_requests, 1)

    def test_one_write_per_upstream_read_terminator_with_the_last(self):
        proto = self.request()
        proto.dataReceived(HEAD + b"3\r\none\r\n")
        self.assertEqual(len(self.wire.writes), 1)
        self.assertTrue(self.wire.writes[0].endswith(b"\r\n\r\n3\r\none\r\n"))
        proto.dataReceived(b"3\r\ntwo\r\n5\r\nthree\r\n")
        self.assertEqual(self.wire.writes[1:], [b"3\r\ntwo\r\n5\r\nthree\r\n"])
        proto.dataReceived(b"4\r\nfour\r\n0\r\n\r\n")
        self.assertEqual(self.wire.writes[2:], [b"4\r\nfour\r\n0\r\n\r\n"])
        self.assertEqual(parse(self.wire.value()), (200, b"onetwothreefour", True))

    def test_terminator_alone_in_a_read(self):
        proto = self.request()
        proto.dataReceived(HEAD + b"3\r\none\r\n")
        proto.dataReceived(b"0\r\n\r\n")
        self.assertEqual(len(self.wire.writes), 2)
        self.assertEqual(self.wire.writes[1], b"0\r\n\r\n")
        self.assertEqual(parse(self.wire.value()), (200, b"one", True))

    def test_head_arrives_alone_then_the_body(self):
        proto = self.request()
        proto.dataReceived(HEAD)
        self.assertEqual(self.wire.writes, [])  # the head waits for body bytes
        proto.dataReceived(b"2\r\nok\r\n0\r\n\r\n")
        self.assertEqual(len(self.wire.writes), 1)
        self.assertEqual(parse(self.wire.writes[0]), (200, b"ok", True))

    def test_empty_chunked_body_is_head_and_terminator_in_one_write(self):
        proto = self.request()
        proto.dataReceived(HEAD + b"0\r\n\r\n")
        self.assertEqual(len(self.wire.writes), 1, self.wire.writes)
        self.assertTrue(self.wire.writes[0].endswith(b"\r\n\r\n0\r\n\r\n"))
        self.assertEqual(parse(self.wire.writes[0]), (200, b"", True))

    def test_upstream_trailers_are_not_forwarded(self):
        proto = self.request()
        proto.dataReceived(HEAD + b"2\r\nok\r\n0\r\nX-Trailer: 1\r\n\r\n")
        self.assertEqual(len(self.wire.writes), 1)
        self.assertTrue(self.wire.writes[0].endswith(b"2\r\nok\r\n0\r\n\r\n"))
        self.assertEqual(parse(self.wire.writes[0]), (200, b"ok", True))

    def test_keep_alive_next_request_on_the_same_connections(self):
        proto = self.request()
        proto.dataReceived(HEAD + b"1\r\na\r\n0\r\n\r\n")
        self.wire.writes.clear()
        self.wire.clear()
        proto2 = self.request()
        self.assertIs(proto2, proto)  # the pooled upstream connection
        proto.dataReceived(HEAD + b"1\r\nb\r\n0\r\n\r\n")
        self.assertEqual(len(self.wire.writes), 1)
        self.assertEqual(parse(self.wire.writes[0]), (200, b"b", True))

    def test_client_gone_drops_nothing_into_a_dead_transport(self):
        proto = self.request()
        proto.dataReceived(HEAD + b"3\r\none\r\n")
        self.channel.connectionLost(Failure(ConnectionError("gone")))
        n = len(self.wire.writes)
        proto.dataReceived(b"3\r\ntwo\r\n0\r\n\r\n")
        self.assertEqual(len(self.wire.writes), n)

    def test_malformed_upstream_read_sends_what_came_before_and_aborts(self):
        proto = self.request()
        proto.dataReceived(HEAD + b"3\r\none\r\nZZZ\r\n")
        self.assertEqual(len(self.wire.writes), 1)
        self.assertTrue(self.wire.writes[0].endswith(b"3\r\none\r\n"))
        self.assertNotIn(b"0\r\n\r\n", self.wire.value())
        self.assertTrue(self.wire.disconnecting or self.wire.disconnected)

    def test_content_length_response_unchanged(self):
        proto = self.request()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(len(self.wire.writes), 1)
        self.assertTrue(self.wire.writes[0].endswith(b"\r\n\r\nhello"))
        self.assertNotIn(b"chunked", self.wire.writes[0])
