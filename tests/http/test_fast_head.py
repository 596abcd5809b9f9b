"""The fast path's head callbacks (nbgateway.proxy.fast._Head) with the cached
header-name classification: the same parse result (headers, Host, length,
close, decline, underscore) as the per-header classification, over random
heads with every spelling of the names it acts on; the name cache bounded."""

from __future__ import annotations

import random

import httptools

from nbgateway.proxy import fast
from nbgateway.proxy.fast import _Head
from nbgateway.proxy.headers import canonical_name


class _Reference(_Head):
    """The per-header classification the cache replaced."""

    __slots__ = ()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count += 1
        lower = name.lower()
        if lower == b"host":
            self.host = value
        elif lower == b"content-length":
            if self.length is not None or not value.isdigit():
                self.decline = True
            else:
                self.length = int(value)
        elif lower == b"connection":
            # RFC 9110 7.6.1: a comma-separated list; a close token in any field
            tokens = [t.strip().lower() for field in value.split(b",") for t in field.split()]
            if b"close" in tokens:
                self.close = True
        elif lower in (b"transfer-encoding", b"upgrade", b"expect"):
            self.decline = True
        if b"\r" in value or b"\n" in value:
            self.decline = True
        if b"_" in name:
            self.underscore = True
        self.headers.setdefault(canonical_name(name.decode("latin-1")), []).append(value)


NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-LENGTH", b"Connection",
         b"connection", b"Transfer-Encoding", b"Upgrade", b"upgrade", b"Expect",
         b"X_Under", b"x-under_score", b"Accept", b"Cookie", b"X-Forwarded-For", b"Hosts",
         b"Connection-Id"]
VALUES = {b"content-length": [b"0", b"12", b"x1"], b"connection": [b"close", b"keep-alive",
                                                                   b"Keep-Alive Close",
                                                                   b"keep-alive,close",
                                                                   b"X-Foo, Close"]}


def _parse(head_cls: type[_Head], data: bytes) -> tuple:
    head = head_cls()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
        return ("error", type(exc).__name__)
    return (head.url, head.headers, head.count, head.host, head.length, head.close,
            head.decline, head.underscore)


def test_random_heads_parse_as_with_the_per_header_classification():
    rnd = random.Random(4)
    for _ in range(600):
        lines = [b"GET /p HTTP/1.1"]
        for _ in range(rnd.randrange(0, 7)):
            name = rnd.choice(NAMES)
            value = rnd.choice(VALUES.get(name.lower(), [b"v", b"a b", b"1"]))
            lines.append(name + b": " + value)
        data = b"\r\n".join(lines) + b"\r\n\r\n"
        assert _parse(_Head, data) == _parse(_Reference, data), data


def test_the_name_cache_is_bounded():
    fast._NAMES.clear()
    for i in range(fast._NAMES_MAX + 50):
        head = _Head()
        head.on_header(b"X-N%d" % i, b"1")
        assert head.headers == {b"X-N%d" % i: [b"1"]}
    assert len(fast._NAMES) == fast._NAMES_MAX


def test_get_header_reads_as_twisted_headers_would():
    from twisted.web.http_headers import Headers

    from nbgateway.proxy.fast import FastRequest

    class _Channel:
        transport = None

    headers = Headers()
    headers.addRawHeader(b"host", b"a.example")
    headers.addRawHeader(b"X-Two", b"1")
    headers.addRawHeader(b"x-two", b"2")
    req = FastRequest(_Channel(), b"GET", b"/", headers, False)  # type: ignore[arg-type]
    for key in (b"host", b"Host", b"HOST", b"x-two", b"X-Two", b"absent", b"content-length"):
        values = headers.getRawHeaders(key)
        assert req.getHeader(key) == (values[-1] if values else None)
