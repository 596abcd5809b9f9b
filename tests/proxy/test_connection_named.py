"""``connection_named``: the names a ``Connection`` header adds to the
standard hop-by-hop set, memoised per value.  Dropping a header whose
lower-case name is in the standard set or in the answer drops exactly the
headers the full token set drops, so the relays (the plan's head, the
general path's headers, the response relay) skip the per-name lower-case
copy when a message says only ``keep-alive`` (browsers, nginx)."""

from __future__ import annotations

import random

from twisted.web.http_headers import Headers

from nbgateway.proxy import headers as hmod
from nbgateway.proxy.headers import (
    _HOP_BY_HOP_B,
    _tokens,
    connection_named,
    filter_response_headers,
    relay_response_headers,
)

NAMES = [b"Keep-Alive", b"keep-alive", b"X-Foo", b"x-foo", b"Upgrade", b"TE", b"Trailer",
         b"Accept", b"Cookie", b"Host", b"Proxy-Connection", b"Content-Type", b"X-Bar",
         b"Transfer-Encoding", b"Cache-Control", b"Date"]
TOKENS = [b"keep-alive", b"Keep-Alive", b"close", b"CLOSE", b"x-foo", b"X-Bar", b"upgrade",
          b"te", b"cache-control", b" ", b"", b"unknown"]


def test_keep_alive_names_nothing_more():
    for value in (b"keep-alive", b"Keep-Alive", b" keep-alive ,Upgrade", b"TE, Trailer"):
        named = connection_named([value])
        assert named == frozenset() and not named
    # "close" is no standard hop-by-hop name: a header called Close still goes
    assert connection_named([b"close"]) == connection_named([b"Keep-Alive, Close"]) == {b"close"}
    assert connection_named([b"Keep-Alive, X-Foo"]) == {b"x-foo"}
    assert connection_named([b"close", b"X-Bar , x-foo"]) == {b"close", b"x-bar", b"x-foo"}


def test_the_same_headers_dropped_as_with_every_token():
    rng = random.Random(7)
    for _ in range(3000):
        values = [b",".join(rng.sample(TOKENS, rng.randint(1, 3)))
                  for _ in range(rng.choice((1, 1, 1, 2)))]
        every = _tokens(values)
        named = connection_named(values)
        assert named == every - _HOP_BY_HOP_B
        for name in NAMES:
            lname = name.lower()
            assert ((lname in _HOP_BY_HOP_B or lname in named)
                    == (lname in _HOP_BY_HOP_B or lname in every))


def test_the_memo_is_bounded_and_keeps_short_values_only():
    long_value = b"x-" + b"a" * 100
    assert connection_named([long_value]) == {long_value}
    assert long_value not in hmod._CONNECTION_NAMED
    for i in range(hmod._CONNECTION_NAMED_MAX + 50):
        connection_named([b"x-h%d" % i])
    assert len(hmod._CONNECTION_NAMED) <= hmod._CONNECTION_NAMED_MAX
    assert connection_named([b"keep-alive"]) == frozenset()


def test_relay_with_connection_named_headers_equals_the_filter():
    rng = random.Random(11)
    for _ in range(500):
        raw = {}
        for name in rng.sample(NAMES, rng.randint(1, 8)):
            raw[name] = [b"v"]
        raw[b"Connection"] = [b",".join(rng.sample(TOKENS, rng.randint(1, 3)))]
        upstream = Headers(raw)
        target = Headers()
        relay_response_headers(target, upstream)
        expected = filter_response_headers(Headers(raw))
        expected.removeHeader(b"server")
        assert dict(target.getAllRawHeaders()) == dict(expected.getAllRawHeaders())
