"""The fast path's name memos are bounded in bytes, not only in entries: a
client's 4,200 requests, each with one distinct 8,000-byte header name (the
fast path's head limit is 8 kB), pinned ~99 MB in fast_request._NAMES (the
raw name, its canonical form and its 'Name: ' line start) and
headers._DROPPED, whether or not any route matched the Host.  Like the other
memos (PLAN_SKIPS, _RELAY_KINDS, _CONNECTION_NAMED, http11_wire._NAMES),
they keep names of at most 64 bytes only."""

from __future__ import annotations

import tracemalloc

import httptools
from twisted.web import http_headers

from nbgateway.proxy import fast_request, headers
from nbgateway.proxy.fast_request import _Head
from tests.proxy.test_h1_adversarial_memos import emptied_memos


def test_long_header_names_do_not_pin_memory_in_the_name_memos(monkeypatch):
    # twisted's own encoder cache (10,000 names of any length, shared with
    # twisted.web's parse) is not the gateway's: left out of the count
    monkeypatch.setattr(http_headers._NameEncoder, "_MAX_CACHED_HEADERS", 0)
    monkeypatch.setattr(http_headers._nameEncoder, "_canonicalHeaderCache", {})
    with emptied_memos():
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(4200):
                name = b"X-%06d-" % i + b"a" * 8000
                head = _Head()
                httptools.HttpRequestParser(head).feed_data(
                    b"GET / HTTP/1.1\r\nHost: nowhere.example\r\n" + name + b": v\r\n\r\n")
                del head
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert kept < 4_000_000, (kept, len(fast_request._NAMES), len(headers._DROPPED))
        # short names are still memoised
        head = _Head()
        httptools.HttpRequestParser(head).feed_data(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Short: v\r\n\r\n")
        assert b"X-Short" in fast_request._NAMES
