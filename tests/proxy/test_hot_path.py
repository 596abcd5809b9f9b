"""The request path's per-request savings (issue 20): a response's head and
first body bytes leave in one transport write, and a request on a pooled
connection builds no Agent and no endpoint."""

from __future__ import annotations

from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import URI

from nbgateway.dial.pool import UpstreamPools
from nbgateway.proxy.streaming import ProxySite


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "100.64.0.2", 40000),
                         hostAddress=IPv4Address("TCP", "100.64.0.1", 80))
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))


class Small(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"

    def render_HEAD(self, request):
        return b""


class Streamed(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.write(b"one,")
        request.write(b"two")
        request.finish()
        return server.NOT_DONE_YET


def serve(res, raw: bytes) -> CountingTransport:
    site = ProxySite(res, reactor=task.Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "100.64.0.2", 40000))
    t = CountingTransport()
    channel.makeConnection(t)
    channel.dataReceived(raw)
    return t


class HeadCoalescingTests(unittest.TestCase):
    def test_small_response_is_one_write(self):
        t = serve(Small(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(t.writes), 1, t.writes)
        self.assertTrue(t.writes[0].startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(t.writes[0].endswith(b"\r\n\r\nhello"))
        self.assertIn(b"Content-Length: 5\r\n", t.writes[0])

    def test_head_and_empty_bodies_and_later_writes(self):
        t = serve(Small(), b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(t.writes), 1, t.writes)
        self.assertTrue(t.writes[0].endswith(b"\r\n\r\n"))
        t = serve(Streamed(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        # head + first chunk together; later chunks and the last chunk follow
        self.assertTrue(t.writes[0].startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(t.writes[0].endswith(b"\r\n\r\n4\r\none,\r\n"), t.writes[0])
        self.assertEqual(b"".join(t.writes[1:]), b"3\r\ntwo\r\n0\r\n\r\n")

    def test_pipelined_requests_keep_their_order(self):
        t = serve(Small(), b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(t.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual(len(t.writes), 2)


class CountingDialer:
    def __init__(self) -> None:
        self.endpoints = 0

    def endpoint(self, host: str, port: int, timeout: float):
        self.endpoints += 1
        raise ConnectionRefusedError(host)


class AgentCacheTests(unittest.TestCase):
    def test_same_arguments_same_agent_no_endpoint_until_connect(self):
        pools = UpstreamPools(reactor)
        dialer, other = CountingDialer(), CountingDialer()
        a1 = pools.agent("acc", dialer, direct=True, skip_verify=False, timeout=5)
        a2 = pools.agent("acc", dialer, direct=True, skip_verify=False, timeout=5)
        self.assertIs(a1, a2)
        self.assertIsNot(a1, pools.agent("acc", other, direct=True, skip_verify=False,
                                         timeout=5))
        self.assertIsNot(a1, pools.agent("acc", dialer, direct=True, skip_verify=False,
                                         timeout=6))
        self.assertIsNot(a1, pools.agent("acc2", dialer, direct=True, skip_verify=False,
                                         timeout=5))
        factory = pools.endpoint_factory(dialer, timeout=5, skip_verify=False)
        e1 = factory.endpointForURI(URI.fromBytes(b"http://10.0.0.1:8080/x"))
        e2 = factory.endpointForURI(URI.fromBytes(b"http://10.0.0.1:8080/y"))
        self.assertIs(e1, e2)
        self.assertEqual(dialer.endpoints, 0)  # nothing dialed, nothing built
        d = e1.connect(None)
        self.assertEqual(dialer.endpoints, 1)  # built per connect, never cached
        self.failureResultOf(d, ConnectionRefusedError)

    def test_close_account_forgets_its_agents(self):
        pools = UpstreamPools(reactor)
        dialer = CountingDialer()
        a1 = pools.agent("acc", dialer, direct=True, skip_verify=False, timeout=5)
        pools.close_account("acc")
        self.assertIsNot(a1, pools.agent("acc", dialer, direct=True, skip_verify=False,
                                         timeout=5))


class IdentityHeaderCacheTests(unittest.TestCase):
    def test_cached_per_identity_value_and_unhashable_identities_work(self):
        from nbgateway.proxy.headers import identity_headers
        from nbgateway.routes.identity import Identity

        a = identity_headers(Identity("u1", "alice@x", ("g1", "g2"), ("eng", ""), "oidc"))
        b = identity_headers(Identity("u1", "alice@x", ("g1", "g2"), ("eng", ""), "oidc"))
        self.assertIs(a, b)  # computed once for equal identities
        self.assertEqual(a, {"X-NetBird-User": "alice@x", "X-NetBird-Groups": "eng,g2"})
        c = identity_headers(Identity("u2", "bob@x", ["g1"], ["ops"], "oidc"))  # lists
        self.assertEqual(c, {"X-NetBird-User": "bob@x", "X-NetBird-Groups": "ops"})
        self.assertEqual(identity_headers(None), {})
