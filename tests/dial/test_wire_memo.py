"""The upstream client's bytes-level helpers keep their results with their
memos: ``split_url`` through its per-origin cache, and the response head's
CR/LF sanitising without ``Headers.addRawHeader``."""

from __future__ import annotations

import random

import pytest
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers

from nbgateway.dial import http11_wire
from nbgateway.dial.http11_conn import UpstreamConnection
from nbgateway.dial.http11_wire import _split_url, split_url


def test_split_url_is_the_plain_split_for_hits_and_misses():
    rnd = random.Random(5)
    http11_wire._ORIGINS.clear()
    origins = [b"http://10.0.0.5:8080", b"https://[fd00::1]", b"http://h.example",
               b"https://h.example:8443", b"http://[fd00::2]:81", b"http://h:0",
               b"ftp://h", b"http://", b"http://h:x", b"http://[fd00::1", b"h.example",
               b"://h", b"http://h?q=1", b"http://" + b"a" * 400]
    tails = [b"", b"/", b"/a/b?q=1", b"/?x", b"//double"]
    for _ in range(2000):
        url = rnd.choice(origins) + rnd.choice(tails)
        try:
            want = _split_url(url)
        except ValueError:
            with pytest.raises(ValueError):
                split_url(url)
            continue
        assert split_url(url) == want, url
    assert all(len(o) <= http11_wire._ORIGIN_CACHED_MAX_LEN for o in http11_wire._ORIGINS)


def test_split_url_cache_is_bounded():
    http11_wire._ORIGINS.clear()
    for i in range(http11_wire._ORIGINS_MAX + 5):
        assert split_url(b"http://h%d.example/x" % i)[1] == b"h%d.example" % i
    assert len(http11_wire._ORIGINS) <= http11_wire._ORIGINS_MAX


class _D:
    response = None

    def callback(self, response):
        self.response = response


@pytest.mark.parametrize("value", [b"a\r\nb", b"a\rb", b"a\nb", b"a\r\n\r\nb", b"plain", b""])
def test_response_header_values_are_sanitised_as_add_raw_header_does(value):
    conn = UpstreamConnection(pool=None, key=(b"http", b"h", 80))
    conn.makeConnection(StringTransport())
    d = _D()
    conn._active, conn._d = True, d
    conn._parser = type("P", (), {"get_status_code": lambda self: 200})()
    lines = [(b"x-odd", value), (b"X-Odd", b"second"), (b"content-length", b"0")]
    for name, v in lines:  # llhttp's callbacks, as it parses the head
        conn.on_header(name, v)
    conn.on_headers_complete()
    want = Headers()
    for name, v in lines:
        want.addRawHeader(name, v)
    assert d.response.headers._rawHeaders == want._rawHeaders
    assert d.response.length == 0


@pytest.mark.parametrize("headers", [
    [(b"Content-Length", b"2"), (b"Server", b"up"), (b"Date", b"d")],
    [(b"content-type", b"a"), (b"Content-Type", b"b")],  # one name, two spellings
    [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"content-length", b"0")],
    [(b"X-Never-Seen-%d" % random.randrange(10**9), b"v"), (b"Content-Length", b"1")],
    [(b"X-Odd", b"a\rb"), (b"Content-Length", b"1")],
    [(b"X-Long-" + b"n" * 80, b"v"), (b"X-Empty", b"")],
    [],
])
def test_response_headers_are_the_add_raw_header_build(headers):
    """The response head's dict is the addRawHeader build, with the name memo
    empty and filled (asked twice: the first parse fills it)."""
    for _ in range(2):
        conn = UpstreamConnection(pool=None, key=(b"http", b"h", 80))
        conn.makeConnection(StringTransport())
        d = _D()
        conn._active, conn._d = True, d
        conn._parser = type("P", (), {"get_status_code": lambda self: 200})()
        for name, v in headers:  # llhttp's callbacks, as it parses the head
            conn.on_header(name, v)
        conn.on_headers_complete()
        want = Headers()
        for name, v in headers:
            want.addRawHeader(name, v)
        assert d.response.headers._rawHeaders == want._rawHeaders
        assert all(type(v) is list for v in d.response.headers._rawHeaders.values())
