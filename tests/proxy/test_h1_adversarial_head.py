"""Adversarial request heads through the HTTP/1.1 fast path's upstream head
(the head parse's ``upstream_copy`` taken by ``RoutePlan.head``, commits
62614e7 / 8513e52), against the walk of the same headers and against the
general path (``prepare_upstream_headers`` + ``request_head``) on the headers
twisted.web's own parser makes of the same bytes.

Every head is client bytes: identity and forwarding names in any case, with
``_``, padded, empty, repeated in other case, first or last, among 100
headers; ``Connection`` naming identity names, Host, Content-Length, a copied
name in another case, twice; obs-fold and bare CR/LF attempts; the front
door (``GatewayResource._front_door``: duplicate Host, ``_`` names) and
``strip_credentials`` run between the parse and the plan, as on the fast
path.  What is checked on every upstream head the plan makes:

- the same bytes as the walk and as the general path on twisted.web's parse;
- no client value of X-NetBird-*, Forwarded, X-Forwarded-*, X-Real-IP in any
  spelling; the gateway's own identity and forwarding lines exactly once;
- no hop-by-hop header and no header named in a Connection value;
- one framing: at most one Content-Length, no Transfer-Encoding next to it,
  no CR/LF inside a line.
"""

from __future__ import annotations

import random
import re
from types import SimpleNamespace
from typing import Any

import httptools
import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.web import http

from nbgateway.auth.tokens import strip_credentials
from nbgateway.dial.http11_wire import request_head, split_url
from nbgateway.http.site import GatewayResource
from nbgateway.proxy.fast import MAX_FAST_HEAD, MAX_FAST_HEADERS
from nbgateway.proxy.fast_request import FastRequest, ParsedHeaders, _Head
from nbgateway.proxy.headers import (
    GROUPS_HEADER,
    HOP_BY_HOP,
    USER_HEADER,
    header_key,
    identity_headers,
    is_protected,
)
from nbgateway.proxy.plan import RoutePlan
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.routes.context import RequestContext
from nbgateway.routes.identity import Identity
from nbgateway.routes.service import TargetOptions, entry_from_mapping
from tests.proxy.test_plan import _mapping

ALICE = Identity("u1", "alice@example.com", ("g1", "g2"), ("devs", "ops"))
CLIENT_IP = "100.64.0.10"
EVIL = b"mallory"

#: spellings a client may use for names the gateway owns
PROTECTED = [b"X-NetBird-User", b"x-netbird-user", b"X-NETBIRD-USER", b"X_NetBird_User",
             b"x-netbird_user", b"X-NetBird-Groups", b"x-netbird-groups", b"X-Netbird-Groups",
             b"X-NetBird-Jwt-Assertion", b"X-NetBird-Anything", b"Forwarded", b"forwarded",
             b"X-Forwarded-For", b"x-forwarded-for", b"X_Forwarded_For", b"X-Forwarded-Host",
             b"X-Forwarded-Proto", b"X-Forwarded-Port", b"x-forwarded-server", b"X-Real-IP",
             b"x-real-ip", b"X-Real_Ip"]
HOP = [b"Connection", b"Keep-Alive", b"keep-alive", b"TE", b"te", b"Trailer", b"Upgrade",
       b"Proxy-Connection", b"proxy-connection", b"Proxy-Authorization", b"Proxy-Authenticate",
       b"PROXY-AUTHORIZATION"]
ORDINARY = [b"User-Agent", b"Accept", b"accept", b"ACCEPT", b"X-Env", b"x-env", b"X-Private",
            b"x-private", b"Referer", b"Cache-Control", b"Accept-Language", b"Authorization",
            b"X-Api-Token", b"If-None-Match", b"Cookie", b"cookie", b"Content-Type",
            b"Expect", b"X-Netbird", b"X-NetBirdUser", b"NetBird-User", b"X-Forwarded",
            b"X_Custom", b"Accept_Language"]
CONNECTIONS = [b"keep-alive", b"close", b"Keep-Alive", b"keep-alive, X-Private",
               b"X-NetBird-User", b"x-netbird-user, keep-alive", b"Host", b"Content-Length",
               b"content-length, x-env", b"X-PRIVATE", b"Accept", b"accept,  ,X-Env",
               b"X-Forwarded-For", b"Cookie", b"Authorization", b", ,", b"", b"te, upgrade",
               b"X-NetBird-Groups , x-private"]
VALUES = [EVIL, b"", b" " + EVIL, EVIL + b"  ", b"\t" + EVIL + b"\t", b"a, " + EVIL,
          b"v1", b"v2", b"x=1; nb_session=s", b"  spaced  out  ", b"\x7f\x80\xff"]

PROTECTED_OUT = {b"x-netbird-user", b"x-netbird-groups", b"x-forwarded-for",
                 b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port", b"x-real-ip"}


class _Channel:
    transport = None


def fast_parse(head: bytes) -> FastRequest | None:
    """The request the fast path makes of ``head`` (FastHTTPChannel._next_request's
    parse and decline rules, then the front door), or None: the fast path hands
    the head to twisted.web (or the front door answers it)."""
    end = head.find(b"\r\n\r\n")
    if end < 0 or end + 4 > MAX_FAST_HEAD or head[:1] in (b"\r", b"\n"):
        return None
    fields = _Head()
    parser = httptools.HttpRequestParser(fields)
    try:
        parser.feed_data(head[:end + 4])
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if (fields.decline or parser.get_http_version() != "1.1" or fields.count > MAX_FAST_HEADERS
            or not fields.url.startswith(b"/") or parser.get_method() == b"CONNECT"):
        return None
    headers = ParsedHeaders()  # as FastHTTPChannel makes them
    headers._rawHeaders = fields.headers
    headers.changed = False
    req = FastRequest(_Channel(), parser.get_method(), fields.url, headers, fields.close,
                     fields.underscore, None)
    if fields.copy_ok:
        req.upstream_copy = (fields.copy, len(fields.headers))
    if front_door(req) is not None:
        return None
    return req


def front_door(req: Any) -> Any:
    """GatewayResource._front_door (duplicate Host refused, ``_`` names
    dropped) and the service-token strip: what runs between parse and plan."""
    door = SimpleNamespace(underscore_dropped=0, allow_underscore_headers=False)
    answer = GatewayResource._front_door(door, req)  # type: ignore[arg-type]
    if answer is None:
        strip_credentials(req.requestHeaders)
    return answer


class _Captured(http.Request):
    seen: list[Any] = []

    def process(self) -> None:
        _Captured.seen.append(self)
        self.setResponseCode(204)
        self.finish()


def twisted_parse(head: bytes) -> Any:
    """The request twisted.web's own parser makes of ``head`` (then the
    front door), or None."""
    _Captured.seen = []
    channel = http.HTTPChannel()
    channel.requestFactory = _Captured
    channel.makeConnection(StringTransport())
    channel.dataReceived(head)
    if not _Captured.seen:
        return None
    req = _Captured.seen[0]
    req.getClientAddress = lambda: SimpleNamespace(host=CLIENT_IP, port=40000)
    if front_door(req) is not None:
        return None
    return req


PROXY = ReverseProxy(task.Clock(), None, lambda a, d: object())
ENTRIES = [entry_from_mapping(m) for m in (
    _mapping(),
    _mapping(custom={"X-Env": "prod"}),
    _mapping(custom={"X-Other": "1", "x-private": "ours"}),
    _mapping(pass_host=True),
)]


def _ctx(entry: Any, identity: Identity | None, host: str = "app.example") -> tuple[Any, Any]:
    route = entry.service.router.match("/p")
    ctx = RequestContext(overlay=True, source_ip=CLIENT_IP, host=host, identity=identity,
                         service=entry.service, route=route)
    return route, ctx


def planned(entry: Any, req: Any, ctx: Any, *, walk: bool = False) -> bytes | None:
    route = ctx.route
    plan = RoutePlan(route, entry.service, TargetOptions.of(route.options),
                     PROXY.forwarded_proto, None)
    assert plan.eligible
    copy = getattr(req, "upstream_copy", None)
    if walk and copy is not None:
        req.upstream_copy = None
    raw_path, _, query = req.uri.partition(b"?")
    try:
        return plan.head(req, ctx, req.method, raw_path, raw_path.decode("latin-1"), query,
                         None, None)
    finally:
        if walk and copy is not None:
            req.upstream_copy = copy


def general(req: Any, ctx: Any) -> bytes:
    """The general path's head (LeanAgent's serialisation of _url_headers)."""
    service, route = ctx.service, ctx.route
    raw_path, _, query = req.uri.partition(b"?")
    url, headers = PROXY._url_headers(req, ctx, service, route, TargetOptions.of(route.options),
                                      raw_path.decode("latin-1"), query.decode("latin-1"))
    _s, _h, _p, netloc, path = split_url(url)
    return request_head(req.method, path, headers, netloc, -1)


def ows(head: bytes) -> bytes:
    """``head`` with each line's trailing SP/HT removed: llhttp (the fast
    path) keeps a value's trailing whitespace, twisted.web strips it (a
    difference older than these changes, in values only)."""
    return re.sub(rb"[ \t]+\r\n", b"\r\n", head)


def upstream_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header lines of an upstream head, split strictly (CRLF only)."""
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    out = []
    for line in lines[1:]:
        assert b"\n" not in line and b"\r" not in line, line
        name, sep, value = line.partition(b": ")
        assert sep and name and b" " not in name and b"\t" not in name, line
        out.append((name, value))
    return out


def check_upstream(head: bytes, sent: list[tuple[bytes, bytes]], identity: Identity | None,
                   custom: dict[str, str]) -> None:
    """The security properties of one upstream head (see the module docstring)."""
    lines = upstream_lines(head)
    keys = [header_key(n).encode() for n, _v in lines]
    # the names the client's Connection values name (any of its Connection lines)
    named = set()
    for name, value in sent:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    custom_keys = {header_key(n).encode() for n in custom}
    for (name, value), key in zip(lines, keys, strict=True):
        lname = name.lower()
        assert lname.decode() not in HOP_BY_HOP, (name, head)
        if lname in named and key not in custom_keys:
            # a header the client named in Connection is never the client's:
            # only the gateway's own lines may carry such a name
            assert key in PROTECTED_OUT or lname in (b"host", b"cookie"), (name, head)
        if is_protected(name):
            assert key in PROTECTED_OUT and b"_" not in name, (name, head)
            assert EVIL not in value, (name, head)
    for key in (b"x-forwarded-for", b"x-real-ip", b"x-forwarded-host", b"x-forwarded-proto",
                b"x-forwarded-port", b"host"):
        assert keys.count(key) == 1, (key, head)
    user = [v for n, v in lines if header_key(n) == "x-netbird-user"]
    groups = [v for n, v in lines if header_key(n) == "x-netbird-groups"]
    stamped = identity_headers(identity)
    assert user == ([stamped[USER_HEADER].encode()] if USER_HEADER in stamped else []), head
    assert groups == ([stamped[GROUPS_HEADER].encode()] if GROUPS_HEADER in stamped else []), head
    assert all(b"nb_session" not in v for n, v in lines if n.lower() == b"cookie"), head
    assert keys.count(b"content-length") <= 1 and b"transfer-encoding" not in keys, head
    assert b"forwarded" not in keys and b"x-forwarded-server" not in keys, head


def random_head(rng: random.Random) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    many = rng.random() < 0.1
    count = rng.randint(90, 105) if many else rng.randint(0, 14)
    lines = []
    for _ in range(count):
        pool = rng.choice((PROTECTED, PROTECTED, HOP, ORDINARY, ORDINARY))
        lines.append((rng.choice(pool), rng.choice(VALUES)))
    for _ in range(rng.choice((0, 1, 1, 2))):
        lines.insert(rng.randint(0, len(lines)), (b"Connection", rng.choice(CONNECTIONS)))
    if rng.random() < 0.3:  # an identity name first or last
        spot = rng.choice((0, len(lines)))
        lines.insert(spot, (rng.choice(PROTECTED[:10]), EVIL))
    lines.insert(rng.randint(0, len(lines)), (rng.choice((b"Host", b"host", b"HOST")),
                                              b"app.example"))
    head = (b"GET /p?q=%d HTTP/1.1\r\n" % rng.randint(0, 9)
            + b"".join(n + b": " + v + b"\r\n" for n, v in lines) + b"\r\n")
    return head, lines


def served(entry: Any, req: Any, ctx: Any) -> bytes:
    """The head the gateway sends for ``req``: the plan's, or (None) the
    general path's on the same request."""
    got = planned(entry, req, ctx)
    return got if got is not None else general(req, ctx)


def test_random_adversarial_heads_plan_equals_walk_and_twisted_web():
    rng = random.Random(1313)
    taken = compared = served_count = 0
    for _ in range(2000):
        head, sent = random_head(rng)
        fast = fast_parse(head)
        if fast is None:
            continue
        slow = twisted_parse(head)
        assert slow is not None, head  # what the fast path serves, twisted.web serves
        entry = rng.choice(ENTRIES)
        identity = rng.choice((None, ALICE))
        _route, ctx = _ctx(entry, identity)
        custom = dict(TargetOptions.of(ctx.route.options).custom_headers)
        got = served(entry, fast, ctx)
        check_upstream(got, sent, identity, custom)
        assert ows(got) == ows(general(slow, ctx)), head
        served_count += 1
        if planned(entry, fast, ctx) is None:
            continue
        assert got == planned(entry, fast, ctx, walk=True), head
        compared += 1
        taken += fast.upstream_copy is not None
    assert served_count > 600 and compared > 400 and taken > 150, (
        served_count, compared, taken)


@pytest.mark.parametrize("lines", [
    # identity names first, last, repeated in other case, padded, empty
    [(b"x-netbird-user", EVIL), (b"Host", b"app.example"), (b"Accept", b"a")],
    [(b"Host", b"app.example"), (b"Accept", b"a"), (b"X-NETBIRD-USER", EVIL)],
    [(b"Host", b"app.example"), (b"X-NetBird-User", EVIL), (b"x-netbird-user", EVIL),
     (b"X-NetBird-Groups", b""), (b"x-NetBird-groups", b"   ")],
    [(b"Host", b"app.example"), (b"X-NetBird-User", b""), (b"X_NetBird_User", EVIL)],
    # Connection naming identity / forwarding / Host / Content-Length / a copied name
    [(b"Host", b"app.example"), (b"Connection", b"X-NetBird-User, Host, Content-Length"),
     (b"X-NetBird-User", EVIL), (b"Accept", b"a")],
    [(b"Host", b"app.example"), (b"Connection", b"x-forwarded-for"), (b"X-Env", b"e")],
    [(b"Host", b"app.example"), (b"Connection", b"keep-alive"), (b"Connection", b"X-Private"),
     (b"X-Private", b"secret"), (b"Accept", b"a")],
    [(b"Host", b"app.example"), (b"Connection", b"ACCEPT"), (b"accept", b"a"),
     (b"Accept", b"b")],
    # 100 headers, identity at both ends
    [(b"X-NetBird-User", EVIL), (b"Host", b"app.example")]
    + [(b"X-H%d" % i, b"v") for i in range(96)] + [(b"x-netbird-groups", EVIL)],
])
@pytest.mark.parametrize("identity", [None, ALICE])
def test_named_adversarial_heads(lines, identity):
    head = (b"GET /p HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in lines)
            + b"\r\n")
    for entry in ENTRIES:
        _route, ctx = _ctx(entry, identity)
        custom = dict(TargetOptions.of(ctx.route.options).custom_headers)
        fast = fast_parse(head)
        assert fast is not None, head
        got = served(entry, fast, ctx)
        if planned(entry, fast, ctx) is not None:
            assert got == planned(entry, fast, ctx, walk=True)
        assert ows(got) == ows(general(twisted_parse(head), ctx))
        check_upstream(got, lines, identity, custom)
        assert b"secret" not in got and EVIL not in got


#: heads whose framing or lines are ambiguous: the fast path must not serve
#: them itself (twisted.web answers them, or refuses them)
SMUGGLING = [
    b"POST /p HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3, 3\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: app.example\r\nContent-Length: +3\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: app.example\r\ntransfer-encoding : chunked\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: app.example\r\nContent-Length : 3\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: app.example\r\nContent-Length\t: 3\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: app.example\r\nX-A: a\r\n X-NetBird-User: " + EVIL + b"\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: app.example\r\nX-A: a\r\n\tContent-Length: 5\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: app.example\r\nX-A: a\nX-NetBird-User: " + EVIL + b"\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: app.example\r\nX-A: a\rX-NetBird-User: " + EVIL + b"\r\n\r\n",
    b"GET /p HTTP/1.1\nHost: app.example\nX-NetBird-User: " + EVIL + b"\n\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: app.example\r\nHost: other.example\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: app.example\r\nX-A: a\x00b\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: app.example\r\nX A: a\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: app.example\r\n: a\r\n\r\n",
    b"GET /p HTTP/1.0\r\nHost: app.example\r\n\r\n",
]


@pytest.mark.parametrize("head", SMUGGLING)
def test_ambiguous_heads_are_not_served_by_the_fast_path(head):
    req = fast_parse(head)
    if req is None:
        # handed to twisted.web: it refuses the head, or the general path's
        # upstream head (its own framing) is unambiguous
        for body in (b"abc", b"3\r\nabc\r\n0\r\n\r\n"):
            slow = twisted_parse(head + body)
            if slow is not None:
                _route, ctx = _ctx(ENTRIES[0], ALICE)
                check_upstream(general(slow, ctx), [], ALICE, {})
        return
    # served: the upstream head is unambiguous and carries no client identity
    _route, ctx = _ctx(ENTRIES[0], ALICE)
    got = planned(ENTRIES[0], req, ctx)
    assert got is not None
    check_upstream(got, [], ALICE, {})
    raise AssertionError(f"fast path served an ambiguous head: {head!r} -> {got!r}")


def test_a_padded_content_length_is_its_number_or_declined():
    """OWS around a Content-Length value is not part of it (RFC 9110 5.5):
    the fast path reads 3 (as twisted.web) or leaves the head to twisted.web."""
    for value in (b" 3 ", b"3\t", b"\t3"):
        fields = _Head()
        httptools.HttpRequestParser(fields).feed_data(
            b"POST /p HTTP/1.1\r\nHost: app.example\r\nContent-Length:" + value + b"\r\n\r\n")
        assert fields.decline or fields.length == 3, value


def test_header_count_changes_after_the_parse_fall_back_to_the_walk():
    """Names dropped between parse and plan (the front door's ``_`` names,
    the service-token strip, Authorization with a token) are not sent, and a
    dropped name replaced by an added one (same count) is not sent either."""
    entry = ENTRIES[0]
    _route, ctx = _ctx(entry, ALICE)
    head = (b"GET /p HTTP/1.1\r\nHost: app.example\r\nX_Under: 1\r\nAccept: a\r\n"
            b"X-Env: e\r\nAuthorization: Basic abc\r\n\r\n")
    req = fast_parse(head)
    assert req is not None and req.upstream_copy is not None
    got = planned(entry, req, ctx)
    assert b"X_Under" not in got and b"Accept: a\r\n" in got
    assert got == planned(entry, req, ctx, walk=True) == general(twisted_parse(head), ctx)
    # a header removed and another added (the count unchanged): the copy is stale
    req = fast_parse(head)
    req.requestHeaders.removeHeader(b"X-Env")
    req.requestHeaders.setRawHeaders(b"X-Added", [b"n"])
    got = planned(entry, req, ctx)
    assert got == planned(entry, req, ctx, walk=True)


def test_route_options_never_leak_between_routes_or_tenants():
    """The name memo ('Name: ' per name) is global; a route's custom headers
    are not: a name one route overrides is the client's on another route,
    whichever route saw it first, and the plans of two accounts never share
    lines."""
    head = b"GET /p HTTP/1.1\r\nHost: app.example\r\nX-Env: client\r\nX-Private: p\r\n\r\n"
    other = entry_from_mapping(_mapping(custom={"X-Private": "tenant-b"}).__class__(
        id="svc2", account_id="acct-b", domain="app.example", private=True,
        path=_mapping(custom={"X-Private": "tenant-b"}).path))
    order = [ENTRIES[1], ENTRIES[0], other, ENTRIES[0], ENTRIES[1], other]
    for entry in order:
        _route, ctx = _ctx(entry, ALICE)
        got = served(entry, fast_parse(head), ctx)
        custom = TargetOptions.of(ctx.route.options).custom_headers
        if "X-Env" in custom:
            assert (b"X-Env: prod\r\n" in got and b"client" not in got)
        else:
            assert b"X-Env: client\r\n" in got
        if "X-Private" in custom:
            assert (b"X-Private: tenant-b" in got and b": p\r\n" not in got)
        else:
            assert b"X-Private: p\r\n" in got and b"tenant-b" not in got
