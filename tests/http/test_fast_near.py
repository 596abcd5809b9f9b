"""The fast path's near repeat (``FastHTTPChannel._next_request``,
``fast_request.one_line_differs``/``near_line``): a header section that
differs from the connection's previous one in one header's value (a
browser's Referer, Accept, Sec-Fetch-Dest) takes the kept parse of the
previous section with that one value replaced, llhttp still checking the
whole head.  Every request must come out as a fresh parse of its head alone
makes it (headers, the plan's copied lines, the "_" flag, persistence, the
body), whatever the connection's earlier requests were and whatever the
gateway did to their headers afterwards; a head llhttp refuses is refused."""

from __future__ import annotations

import random
from typing import Any

from nbgateway.proxy import fast_request
from nbgateway.proxy.fast import NEAR_MIN_LINES
from tests.http.test_fast_memo import _alone, _Answer, _channel

#: a browser-like section's lines (at least NEAR_MIN_LINES once split);
#: Host, Connection, "_" names, a name twice, two spellings of one name,
#: identity and hop-by-hop names, copied and not copied names
BASE = [
    b"Host: app.example", b"Connection: keep-alive", b"User-Agent: Mozilla/5.0",
    b"Accept: text/html", b"Accept-Language: en-US", b"Referer: http://app.example/",
    b"Cookie: a=1; nb_session=x", b"Sec-Fetch-Dest: document", b"X-NetBird-User: mallory",
    b"X_Under: 1", b"Keep-Alive: 5", b"accept-encoding: gzip", b"Accept-Encoding: br",
]
#: values a line may take (OWS around them, a comma list, empty, obs-text)
VALUES = [b"v1", b"  v2", b"v3 \t", b"\tv4\t ", b"a, b", b"", b"close", b"\xe9t\xe9",
          b"http://app.example/p?from=%d", b"keep-alive, X-Private"]


def _section(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def test_every_near_repeat_is_its_heads_fresh_parse(monkeypatch):
    # a name memo of this test's own (earlier tests may have filled the
    # process's to its bound: a name not memoised is parsed header by header)
    monkeypatch.setattr(fast_request, "_NAMES", {})
    rng = random.Random(1313)
    near = 0
    for _ in range(250):
        res = _Answer(rng)
        channel, _ = _channel(res)
        lines = rng.sample(BASE, rng.randint(6, len(BASE)))
        for n in range(rng.randint(2, 10)):
            if n and rng.random() < 0.85:  # one line's value changes
                i = rng.randrange(len(lines))
                name = lines[i].partition(b":")[0]
                value = rng.choice(VALUES)
                lines[i] = name + b":" + (b" " if rng.random() < 0.7 else b"") + (
                    value % n if b"%d" in value else value)
            elif n:  # another section
                lines = rng.sample(BASE, rng.randint(6, len(BASE)))
            data = b"GET /p?n=%d HTTP/1.1\r\n" % n + _section(lines) + b"\r\n"
            parsing = channel._parsing
            kept = parsing is not None and parsing[1].parsed is not None
            before = len(res.seen)
            channel.dataReceived(data)
            want, fast = _alone(data)
            assert channel.fast == fast, data
            if not fast:
                break
            assert res.seen[before:] == want, data
            near += kept and channel._parsing is not None and want != []
            if not channel.persistent or channel._closing:
                break
    assert near > 300, near  # the kept parse was there often


def test_a_near_repeat_is_not_handed_to_python_again(monkeypatch):
    calls: list[bytes] = []
    real = fast_request._Head.on_header

    def counting(self: Any, name: bytes, value: bytes) -> None:
        calls.append(name)
        real(self, name, value)

    monkeypatch.setattr(fast_request._Head, "on_header", counting)
    monkeypatch.setattr(fast_request, "_NAMES", {})
    res = _Answer()
    channel, transport = _channel(res)
    lines = [b"Host: app.example", b"User-Agent: b", b"Accept: */*",
             b"Referer: http://app.example/", b"Accept-Language: en", b"Sec-Fetch-Mode: cors"]
    assert len((_section(lines) + b"\r\n").split(b"\r\n")) >= NEAR_MIN_LINES
    for n in range(6):
        lines[3] = b"Referer: http://app.example/?from=%d" % n
        channel.dataReceived(b"GET /p HTTP/1.1\r\n" + _section(lines) + b"\r\n")
    # the first head, and the second (its parse kept for the next near
    # repeat), go through on_header; the next four only through llhttp
    assert len(calls) == 2 * len(lines)
    assert [seen[2][3] for seen in res.seen] == [
        (b"Referer", [b"http://app.example/?from=%d" % n]) for n in range(6)]
    # the plan's copied lines carry each request's own Referer
    assert [b"http://app.example/?from=%d" % n in seen[3][0] for n, seen in
            enumerate(res.seen)] == [True] * 6
    assert transport.value().count(b"HTTP/1.1 200 OK") == 6


def test_lines_that_change_more_than_a_value_are_parsed_again(monkeypatch):
    """Host, Connection, a "_" name, a name the kept parse has twice, another
    name in the line's place: each near repeat of those goes header by
    header (and still comes out as its fresh parse)."""
    base = [b"Host: app.example", b"User-Agent: b", b"Accept: */*", b"Accept: text/html",
            b"X_Under: 1", b"Connection: keep-alive", b"Referer: r"]
    changes = [(0, b"Host: other.example"), (5, b"Connection: close"), (4, b"X_Under: 2"),
               (2, b"Accept: a/b"), (6, b"Referrer: r")]
    for at, line in changes:
        calls: list[bytes] = []
        real = fast_request._Head.on_header

        def counting(self: Any, name: bytes, value: bytes, calls=calls, real=real) -> None:
            calls.append(name)
            real(self, name, value)

        monkeypatch.setattr(fast_request._Head, "on_header", counting)
        monkeypatch.setattr(fast_request, "_NAMES", {})
        res = _Answer()
        channel, _ = _channel(res)
        for _ in range(2):
            channel.dataReceived(b"GET /a HTTP/1.1\r\n" + _section(base) + b"\r\n")
        changed = list(base)
        changed[at] = line
        data = b"GET /b HTTP/1.1\r\n" + _section(changed) + b"\r\n"
        channel.dataReceived(data)
        assert len(calls) == 3 * len(base), line  # the third head too
        want, _fast = _alone(data)
        assert res.seen[2:] == want, line
        monkeypatch.undo()


def test_a_full_name_memo_only_parses_header_by_header(monkeypatch):
    """Names the memo does not hold (it is full) never take the kept parse:
    each head is parsed header by header, and is its fresh parse."""
    monkeypatch.setattr(fast_request, "_NAMES", {b"X-%d" % i: (b"X-%d" % i, 0, False, b"")
                                                 for i in range(fast_request._NAMES_MAX)})
    res = _Answer()
    channel, _ = _channel(res)
    lines = [b"Host: app.example", b"User-Agent: b", b"Accept: */*",
             b"Referer: r", b"Accept-Language: en", b"Sec-Fetch-Mode: cors"]
    for n in range(4):
        lines[3] = b"Referer: r%d" % n
        data = b"GET /p HTTP/1.1\r\n" + _section(lines) + b"\r\n"
        channel.dataReceived(data)
        assert channel._parsing[1].parsed is None  # nothing kept
        assert res.seen[n:] == _alone(data)[0]


def test_a_refused_near_repeat_is_refused(monkeypatch):
    """A changed line llhttp refuses (a space before the colon, a NUL, a
    bare CR in the value) is refused as without the kept parse, and the
    connection goes to twisted.web."""
    monkeypatch.setattr(fast_request, "_NAMES", {})
    base = [b"Host: app.example", b"User-Agent: b", b"Accept: */*",
            b"Referer: r", b"Accept-Language: en", b"Sec-Fetch-Mode: cors"]
    for bad in (b"Referer : r2", b"Referer: r\x002", b"Referer: r\r2", b"Referer: r\n 2"):
        res = _Answer()
        channel, _ = _channel(res)
        for _ in range(3):
            channel.dataReceived(b"GET /ok HTTP/1.1\r\n" + _section(base) + b"\r\n")
        assert channel._parsing[1].parsed is not None
        changed = list(base)
        changed[3] = bad
        data = b"GET /b HTTP/1.1\r\n" + _section(changed) + b"\r\n"
        channel.dataReceived(data)
        want, fast = _alone(data)
        assert channel.fast == fast and res.seen[3:] == want, bad
