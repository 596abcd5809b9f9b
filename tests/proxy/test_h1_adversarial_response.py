"""Adversarial upstream response heads through the lean client's head parse,
``relay_response_headers`` (the owned, one-update relay of 0254a9b and the
Connection memo of 62614e7) and the fast path's response head join
(5432a66).

Every head is upstream bytes: hop-by-hop names in every spelling, one or two
``Connection`` lines naming Set-Cookie, Content-Type, an identity-like name
or a name in another case, many Set-Cookie values, a name with 50 values,
response headers named like the gateway's identity headers.  Checked on
every relayed response:

- the client's headers equal the header-by-header oracle (filter, then
  setRawHeaders / addRawHeader per name) on twisted's own ``Headers`` of
  a strict parse of the same bytes;
- no hop-by-hop header and none named in any Connection line reaches the
  client (the gateway's own Connection framing aside); every Set-Cookie
  value of the upstream not so named is kept, after the gateway's own
  session cookie, which stays;
- the response head the client gets lists exactly those headers, in order.
"""

from __future__ import annotations

import random
from typing import Any

import httptools
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers

from nbgateway.dial.http11 import ConnectionPool, LeanAgent
from nbgateway.proxy.fast_request import FastRequest
from nbgateway.proxy.headers import HOP_BY_HOP, relay_response_headers
from tests.proxy.test_headers import _relayed_the_old_way
from tests.proxy.test_upstream_client import URL, FakeEndpoints

HOP = ["Connection", "connection", "CONNECTION", "Keep-Alive", "keep-alive", "TE", "te",
       "Trailer", "trailer", "Upgrade", "Proxy-Authenticate", "proxy-authenticate",
       "Proxy-Connection", "Proxy-Authorization"]
NAMES = ["Content-Type", "content-type", "Set-Cookie", "set-cookie", "SET-COOKIE", "Server",
         "Date", "ETag", "Vary", "vary", "Cache-Control", "X-NetBird-User", "x-netbird-groups",
         "X-Forwarded-For", "X-Private", "x-private", "Location", "WWW-Authenticate", "X-Many"]
CONNECTIONS = ["keep-alive", "close", "Keep-Alive", "X-Private", "x-private, keep-alive",
               "Set-Cookie", "set-cookie", "Content-Type", "X-NetBird-User", "Vary, ETag",
               "close, X-PRIVATE", " , ", "Server", "Date", "Trailer, TE"]
GATEWAY_COOKIE = b"nb_session=T; Path=/; HttpOnly"


def upstream_response(raw_head: bytes) -> Any:
    """The lean client's response to ``raw_head`` (its own head parse)."""
    eps = FakeEndpoints()
    agent = LeanAgent(ConnectionPool(task.Clock(), 4, 90.0), eps.endpoint_for)
    d: defer.Deferred = agent.request(b"GET", URL, Headers(), None)
    eps.conns[-1][1].dataReceived(raw_head)
    assert d.called, raw_head
    return d.result


def strict_headers(raw_head: bytes) -> Headers:
    """The same head's header lines as twisted's ``Headers`` (the oracle)."""
    out = Headers()
    for line in raw_head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out.addRawHeader(name, value.strip(b" \t"))
    return out


def client_headers(cookie: bool) -> Headers:
    h = Headers()
    h.setRawHeaders(b"server", [b"TwistedWeb"])
    h.setRawHeaders(b"date", [b"Mon, 01 Jan 2024 00:00:00 GMT"])
    if cookie:
        h.addRawHeader(b"set-cookie", GATEWAY_COOKIE)
    return h


class _Channel:
    def __init__(self) -> None:
        self.transport = StringTransport()


def head_sent(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The header lines the fast path's response head carries for ``headers``
    (FastRequest.write's join), parsed back."""
    channel = _Channel()
    req = FastRequest(channel, b"GET", b"/", Headers(), False)  # type: ignore[arg-type]
    req.responseHeaders = headers
    req.write(b"x")
    got: list[tuple[bytes, bytes]] = []

    class _Cb:
        def on_header(self, name: bytes, value: bytes) -> None:
            got.append((name, value))

    data = channel.transport.value()
    httptools.HttpResponseParser(_Cb()).feed_data(data[:data.index(b"\r\n\r\n") + 4])
    return got


def random_head(rng: random.Random) -> tuple[bytes, list[tuple[str, str]]]:
    pairs: list[tuple[str, str]] = []
    for _ in range(rng.randint(0, 16)):
        name = rng.choice(NAMES + HOP if rng.random() < 0.3 else NAMES)
        if name.lower() == "connection":
            value = rng.choice(CONNECTIONS)
        elif name.lower() == "set-cookie":
            value = f"c{rng.randint(0, 99)}=v; Path=/"
        else:
            value = rng.choice(["1", "text/html", "a, b", "mallory", "", "v  v"])
        pairs.append((name, value))
    for _ in range(rng.choice((0, 1, 1, 2))):
        pairs.insert(rng.randint(0, len(pairs)), ("Connection", rng.choice(CONNECTIONS)))
    if rng.random() < 0.1:
        pairs += [("X-Many", f"m{i}") for i in range(50)]
    head = ("HTTP/1.1 200 OK\r\n" + "".join(f"{n}: {v}\r\n" for n, v in pairs)
            + "Content-Length: 0\r\n\r\n").encode("latin-1")
    return head, pairs


def check_relayed(got: Headers, pairs: list[tuple[str, str]], cookie: bool) -> None:
    named = set()
    for name, value in pairs:
        if name.lower() == "connection":
            named.update(t.strip().lower() for t in value.split(",") if t.strip())
    own = {n.lower(): vs for n, vs in client_headers(cookie).getAllRawHeaders()}
    for name, values in got.getAllRawHeaders():
        lname = name.lower()
        assert lname.decode() not in HOP_BY_HOP, name
        if lname.decode() in named:  # only the gateway's own values of such a name
            assert values == own.get(lname), (name, values, named)
    cookies = got.getRawHeaders(b"set-cookie") or []
    want = [GATEWAY_COOKIE] if cookie else []
    if "set-cookie" not in named:
        want += [v.encode() for n, v in pairs if n.lower() == "set-cookie"]
    assert cookies == want


def test_random_upstream_heads_relay_as_the_oracle():
    rng = random.Random(1331)
    owned_fast = 0
    for _ in range(1500):
        raw_head, pairs = random_head(rng)
        response = upstream_response(raw_head)
        cookie = rng.random() < 0.5
        length = rng.choice((None, 0))
        no_extra = not any(n.lower() == "connection" and v.strip(" ,").lower()
                           not in ("", "keep-alive", "close") for n, v in pairs)
        got, want = client_headers(cookie), client_headers(cookie)
        relay_response_headers(got, response, length, owned=True)
        _relayed_the_old_way(want, strict_headers(raw_head), length)
        assert list(got.getAllRawHeaders()) == list(want.getAllRawHeaders()), raw_head
        check_relayed(got, pairs, cookie)
        # the fast path's head lists those headers, in order, value by value
        sent = head_sent(got)
        listed = [(n, v) for n, vs in got.getAllRawHeaders() for v in vs]
        assert [x for x in sent if x[0] not in (b"Content-Type", b"Transfer-Encoding")] == [
            x for x in listed if x[0] not in (b"Content-Type", b"Transfer-Encoding")]
        owned_fast += no_extra
    assert owned_fast > 400


def test_connection_lists_in_every_case_and_two_connection_lines():
    raw = (b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nX-Private: p\r\n"
           b"CONNECTION: x-PRIVATE, set-COOKIE\r\nSet-Cookie: up=1\r\nX-NetBird-User: u\r\n"
           b"Keep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n")
    got = client_headers(True)
    relay_response_headers(got, upstream_response(raw), 0, owned=True)
    assert got.getRawHeaders(b"x-private") is None
    assert got.getRawHeaders(b"set-cookie") == [GATEWAY_COOKIE]  # named: the upstream's dropped
    assert got.getRawHeaders(b"keep-alive") is None and got.getRawHeaders(b"connection") is None
    assert got.getRawHeaders(b"x-netbird-user") == [b"u"]  # towards the client: a plain header


def test_many_set_cookie_values_are_all_kept_after_the_gateway_cookie():
    cookies = [b"c%d=%d; Path=/" % (i, i) for i in range(60)]
    raw = (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n"
           + b"".join(b"%s: %s\r\n" % (b"Set-Cookie" if i % 2 else b"set-cookie", c)
                      for i, c in enumerate(cookies))
           + b"Content-Length: 0\r\n\r\n")
    got = client_headers(True)
    relay_response_headers(got, upstream_response(raw), 0, owned=True)
    assert got.getRawHeaders(b"set-cookie") == [GATEWAY_COOKIE, *cookies]
    assert [v for n, v in head_sent(got) if n == b"Set-Cookie"] == [GATEWAY_COOKIE, *cookies]
