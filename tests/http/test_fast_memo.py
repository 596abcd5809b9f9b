"""The fast path's per-connection memo of the last header section
(``FastHTTPChannel._next_request``): a head whose header section is byte for
byte the connection's previous one is parsed by llhttp with a target-only
parser and given a copy of the section's earlier parse.  Every request must
come out as a fresh parse of its head alone makes it, whatever the earlier
requests of the connection were and whatever the gateway did to their
headers; a head llhttp refuses is refused with or without the memo."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web import resource

from nbgateway.proxy import fast_request
from nbgateway.proxy.fast import FastHTTPChannel
from nbgateway.proxy.streaming import ProxySite

#: header sections (without the blank line): repeated ones, ones that differ
#: in one byte, identity and hop-by-hop names, "_" names, repeated names
SECTIONS = [
    b"Host: app.example\r\nUser-Agent: b\r\nAccept: */*\r\nCookie: a=1; nb_session=x\r\n",
    b"Host: app.example\r\nUser-Agent: b\r\nAccept: */*\r\nCookie: a=2; nb_session=x\r\n",
    b"Host: app.example\r\nConnection: keep-alive\r\nX-NetBird-User: mallory\r\n"
    b"Accept: text/html\r\nAccept: */*\r\nReferer: http://app.example/\r\n",
    b"host: app.example\r\nX_Under: 1\r\nAccept-Language: en\r\nKeep-Alive: 5\r\n",
    b"Host: app.example\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n",
    b"Host: app.example\r\nContent-Length: 0\r\nAccept: */*\r\n",
    b"Host: app.example\r\nContent-Length: 3\r\nAccept: */*\r\n",
    b"Host: app.example\r\nConnection: close\r\n",
    b"Host: app.example\r\nAccept: */*\r\nAccept:  spaced \r\n",
    b"Host: other.example\r\nHost: app.example\r\n",
]
LINES = [b"GET /a HTTP/1.1", b"GET /b?q=1 HTTP/1.1", b"HEAD /c HTTP/1.1",
         b"DELETE /d HTTP/1.1", b"POST /e HTTP/1.1", b"GET /f HTTP/1.0", b"GET * HTTP/1.1"]


class _Answer(resource.Resource):
    """Records each fast request as parsed, then changes its headers the way
    the front door and the proxy may (drops a name, appends to a value list,
    replaces one) before answering."""

    isLeaf = True
    fast_protocol = FastHTTPChannel

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []
        self.rng = rng

    @staticmethod
    def fast_route(host: bytes) -> bool:
        return True

    def render(self, request: Any) -> bytes:
        raw = request.requestHeaders._rawHeaders
        self.seen.append((request.method, request.uri, [(k, list(v)) for k, v in raw.items()],
                          request.upstream_copy and (list(request.upstream_copy[0]),
                                                     request.upstream_copy[1]),
                          request.underscore_names, request.persistent if hasattr(
                              request, "persistent") else None,
                          request.content.read() if request.content is not None else None))
        if self.rng is not None and raw:
            name = self.rng.choice(list(raw))
            step = self.rng.randrange(3)
            if step == 0:
                request.requestHeaders.removeHeader(name)
            elif step == 1:
                request.requestHeaders.addRawHeader(name, b"added")
            else:
                raw[name][0] = b"changed"  # in place, as nothing should
        return b"ok"


def _channel(res: _Answer) -> tuple[FastHTTPChannel, StringTransport]:
    site = ProxySite(res, reactor=task.Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    assert isinstance(channel, FastHTTPChannel)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
    channel.makeConnection(transport)
    return channel, transport


def _alone(data: bytes) -> tuple[list[tuple[Any, ...]], bool]:
    """What a fresh connection makes of one request: (recorded, still fast)."""
    res = _Answer()
    channel, _ = _channel(res)
    channel.dataReceived(data)
    return res.seen, channel.fast


def test_every_request_is_its_heads_fresh_parse():
    rng = random.Random(1212)
    hits = 0
    for _ in range(300):
        res = _Answer(rng)
        channel, _ = _channel(res)
        section = rng.choice(SECTIONS)
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.3:
                section = rng.choice(SECTIONS)
            line = rng.choice(LINES)
            data = line + b"\r\n" + section + b"\r\n"
            if b"Content-Length: 3" in section:
                data += b"abc"
            before = len(res.seen)
            memo = channel._parsing is not None and channel._parsing[1].parsed is not None
            channel.dataReceived(data)
            want, fast = _alone(data)
            assert channel.fast == fast, data
            if not fast:
                break
            assert res.seen[before:] == want, data
            hits += memo and want != []
            if not channel.persistent or channel._closing:
                break
    assert hits > 150, hits  # the memo was taken often


def test_a_repeated_section_is_not_handed_to_python_again(monkeypatch):
    calls: list[bytes] = []
    real = fast_request._Head.on_header

    def counting(self: Any, name: bytes, value: bytes) -> None:
        calls.append(name)
        real(self, name, value)

    monkeypatch.setattr(fast_request._Head, "on_header", counting)
    res = _Answer()
    channel, transport = _channel(res)
    section = SECTIONS[2]
    for n in range(5):
        channel.dataReceived(b"GET /p?n=%d HTTP/1.1\r\n" % n + section + b"\r\n")
    # the first head, and the second (the section came twice: its parse is
    # kept), go through on_header; the next three only through llhttp
    assert len(calls) == 2 * section.count(b"\r\n")
    assert [seen[1] for seen in res.seen] == [b"/p?n=%d" % n for n in range(5)]
    assert len({repr(seen[2]) for seen in res.seen}) == 1
    channel.dataReceived(b"GET /q HTTP/1.1\r\n" + SECTIONS[0] + b"\r\n")  # another section
    assert len(calls) == 2 * section.count(b"\r\n") + SECTIONS[0].count(b"\r\n")
    assert transport.value().count(b"HTTP/1.1 200 OK") == 6


def test_a_refused_head_is_refused_with_the_memo():
    """The memo's section after a request line llhttp refuses, and with a
    bare LF where the request line ends: llhttp still reads every byte."""
    section = SECTIONS[0]
    for bad in (b"GET /a b HTTP/1.1\r\n", b"GET /a HTTP/1.1\n", b"GET /a HTTP/1.1\r\r\n",
                b"GET /a HTTP/1.1\r\nX: 1\n"):
        res = _Answer()
        channel, _ = _channel(res)
        for _ in range(3):
            channel.dataReceived(b"GET /ok HTTP/1.1\r\n" + section + b"\r\n")
        assert channel._parsing[1].parsed is not None
        channel.dataReceived(bad + section + b"\r\n")
        want, fast = _alone(bad + section + b"\r\n")
        assert channel.fast == fast and res.seen[3:] == want, bad
