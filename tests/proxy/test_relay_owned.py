"""``relay_response_headers`` of an owned upstream (the lean client's dict)
without extra ``Connection`` names (none, or ``keep-alive`` as nginx sends):
hop-by-hop names deleted from it and one dict update, the same client
headers, in the same order, as the header-by-header copy (the oracle of
tests/proxy/test_headers.py), with the gateway's defaults, its own
Set-Cookie or none, and upstream Date/Server/Set-Cookie replacing or
joining them."""

from __future__ import annotations

import random

from twisted.web.http_headers import Headers

from nbgateway.proxy.headers import relay_response_headers
from tests.proxy.test_headers import _relayed_the_old_way

NAMES = ["Content-Type", "content-length", "Server", "Date", "Set-Cookie", "set-cookie",
         "Keep-Alive", "keep-alive", "KEEP-ALIVE", "Transfer-Encoding", "TE", "te", "Trailer",
         "Upgrade", "Proxy-Authenticate", "Proxy-Connection", "ETag", "Vary", "Location",
         "Cache-Control", "X-Frame-Options", "Last-Modified"]


def _client(cookie: bool, close: bool) -> Headers:
    h = Headers()
    if close:
        h.setRawHeaders(b"connection", [b"close"])
    h.setRawHeaders(b"server", [b"TwistedWeb"])
    h.setRawHeaders(b"date", [b"Mon, 01 Jan 2024 00:00:00 GMT"])
    if cookie:
        h.addRawHeader(b"set-cookie", b"nb_session=T; Path=/")
    return h


def test_an_owned_relay_without_extra_connection_names_equals_the_copy():
    rng = random.Random(31)
    taken = 0
    for _ in range(2000):
        pairs = [(rng.choice(NAMES), rng.choice(["1", "a=b", "text/html", "v v"]))
                 for _ in range(rng.randrange(0, 14))]
        connection = rng.choice([None, "keep-alive", "Keep-Alive", "close"])
        if connection is not None:
            pairs.insert(rng.randint(0, len(pairs)), ("Connection", connection))
        upstream, oracle = Headers(), Headers()
        for name, value in pairs:
            upstream.addRawHeader(name, value)
            oracle.addRawHeader(name, value)
        cookie, close = rng.random() < 0.5, rng.random() < 0.3
        got, want = _client(cookie, close), _client(cookie, close)
        length = rng.choice([None, 512])
        relay_response_headers(got, upstream, length, True)
        _relayed_the_old_way(want, oracle, length)
        assert list(got.getAllRawHeaders()) == list(want.getAllRawHeaders()), pairs
        taken += connection != "close"
    assert taken > 1000
