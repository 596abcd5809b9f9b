"""The lean client's response keeps its head's headers as its own
``_rawHeaders`` (the dict the head parse filled) and makes its ``Headers``
object only when ``headers`` is read: the proxy relays a response without
one (one object fewer per response), others' callers still get a
``Headers`` over the same dict, and a redirect rewrite still reads it."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from nbgateway.dial.http11 import ConnectionPool, LeanAgent, LeanResponse
from nbgateway.proxy.headers import relay_response_headers
from tests.proxy.test_lean_path import GET, Path
from tests.proxy.test_upstream_client import URL, FakeEndpoints

ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nX-Up: 1\r\n"
          b"Connection: X-Hop\r\nX-Hop: h\r\n\r\nok")


def _response() -> LeanResponse:
    eps = FakeEndpoints()
    agent = LeanAgent(ConnectionPool(task.Clock(), 4, 90.0), eps.endpoint_for)
    d: defer.Deferred = agent.request(b"GET", URL, Headers(), None)
    eps.conns[-1][1].dataReceived(ANSWER)
    assert d.called
    return d.result


class _Counting:
    """``LeanResponse.headers`` that counts its reads."""

    def __init__(self, real: property) -> None:
        self.real = real
        self.reads = 0

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        self.reads += 1
        return self.real.__get__(obj, owner)


class LeanResponseTests(unittest.TestCase):
    def test_headers_are_made_on_first_read_over_the_heads_dict(self):
        resp = _response()
        self.assertIsNone(resp._headers)
        headers = resp.headers
        self.assertIsInstance(headers, Headers)
        self.assertIs(headers._rawHeaders, resp._rawHeaders)
        self.assertIs(resp.headers, headers)  # made once
        self.assertEqual(headers.getRawHeaders(b"x-up"), [b"1"])
        self.assertEqual(resp.length, 2)

    def test_relaying_the_response_is_relaying_its_headers(self):
        by_response, by_headers = Headers(), Headers()
        relay_response_headers(by_response, _response(), 2, owned=True)
        relay_response_headers(by_headers, _response().headers, 2)
        self.assertEqual(by_response._rawHeaders, by_headers._rawHeaders)
        self.assertFalse(by_response.hasHeader(b"x-hop"))

    def test_the_proxy_relays_without_making_the_headers_object(self):
        counting = _Counting(LeanResponse.__dict__["headers"])
        self.patch(LeanResponse, "headers", counting)
        path = Path()
        for _ in range(3):
            _sent, got = path.exchange(GET, ANSWER)
            self.assertTrue(got.startswith(b"HTTP/1.1 200 OK\r\n"), got)
            self.assertIn(b"\r\nX-Up: 1\r\n", got)
            self.assertIn(b"\r\nSet-Cookie: a=1\r\n", got)
            self.assertNotIn(b"X-Hop", got)
            self.assertTrue(got.endswith(b"\r\n\r\nok"), got)
        self.assertEqual(counting.reads, 0)

    def test_a_redirect_rewrite_reads_the_headers(self):
        path = Path(rewrite_redirects=True)
        path.exchange(GET, ANSWER)  # warm
        _sent, got = path.exchange(
            GET, b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:8081/next\r\n"
                 b"Content-Length: 0\r\n\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 302 Found\r\n"), got)
        self.assertIn(b"\r\nLocation: http://app.example/next\r\n", got)
