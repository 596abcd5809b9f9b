"""The lean upstream client's request head (nbgateway.dial.http11.request_head)
with its cached header-name classification: byte for byte what the
per-header classification gave, over random header mixes (Host present or
not, framing headers in any case, repeated values), and the cache bounded."""

from __future__ import annotations

import random

from twisted.web.http_headers import Headers

from nbgateway.dial import http11
from nbgateway.dial.http11 import request_head


def _reference(method: bytes, path: bytes, headers: Headers, netloc: bytes,
               length: int | None) -> bytes:
    lines = [method, b" ", path, b" HTTP/1.1\r\n"]
    has_host = False
    for name, values in headers.getAllRawHeaders():
        lname = name.lower()
        if lname == b"host":
            has_host = True
        elif lname in (b"content-length", b"transfer-encoding", b"connection"):
            continue
        for v in values:
            lines += (name, b": ", v, b"\r\n")
    if not has_host:
        lines += (b"Host: ", netloc, b"\r\n")
    if length is None:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif length >= 0:
        lines.append(b"Content-Length: %d\r\n" % length)
    lines.append(b"\r\n")
    return b"".join(lines)


NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length",
         b"Transfer-Encoding", b"TRANSFER-encoding", b"Connection", b"connection",
         b"X-Forwarded-For", b"Accept", b"User-Agent", b"Cookie", b"X-NetBird-User",
         b"Hostname", b"Content-Type", b"Connection-Id", b"X-Host"]


def test_random_heads_match_the_per_header_classification():
    rnd = random.Random(20)
    for _ in range(500):
        headers = Headers()
        for _ in range(rnd.randrange(0, 8)):
            name = rnd.choice(NAMES)
            values = [b"v%d" % rnd.randrange(100) for _ in range(rnd.randrange(1, 3))]
            headers.setRawHeaders(name, values)
        length = rnd.choice([None, -1, 0, 17])
        args = (rnd.choice([b"GET", b"POST"]), b"/p?q=1", headers, b"10.0.0.5:8080", length)
        assert request_head(*args) == _reference(*args)


def test_the_name_cache_is_bounded():
    http11._HEAD_KINDS.clear()
    for i in range(http11._HEAD_KINDS_MAX * 3):
        h = Headers()
        h.setRawHeaders(b"X-Name-%d" % i, [b"1"])
        assert request_head(b"GET", b"/", h, b"h", -1) == _reference(b"GET", b"/", h, b"h", -1)
        assert len(http11._HEAD_KINDS) <= http11._HEAD_KINDS_MAX
    long_name = b"X-" + b"a" * 100
    h = Headers()
    h.setRawHeaders(long_name, [b"1"])
    request_head(b"GET", b"/", h, b"h", -1)
    assert long_name not in http11._HEAD_KINDS
