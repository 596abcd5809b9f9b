"""The fast path's head parse makes the upstream lines of the headers a
route plan copies as they are (``FastRequest.upstream_copy``), and the plan
takes them instead of walking the headers: the same upstream head, byte for
byte, as the walk (itself the general path's head, tests/proxy/test_plan.py)
for heads with repeated names, dropped names, ``Connection`` naming a
header, custom headers, and headers changed after the parse."""

from __future__ import annotations

import random
from typing import Any

import httptools
from twisted.internet import task

from nbgateway.proxy.fast_request import FastRequest, ParsedHeaders, _Head
from nbgateway.proxy.plan import RoutePlan
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.routes.context import RequestContext
from nbgateway.routes.identity import Identity
from nbgateway.routes.service import TargetOptions, entry_from_mapping
from tests.proxy.test_plan import _mapping

ALICE = Identity("u1", "alice@example.com", ("g1",), ("devs",))
#: names as clients spell them: copied ones, repeated ones, dropped ones
NAMES = [b"User-Agent", b"accept", b"Accept", b"X-Env", b"sec-ch-ua", b"Referer",
         b"Cookie", b"Keep-Alive", b"X-Forwarded-For", b"x-netbird-user", b"Forwarded",
         b"Proxy-Authorization", b"X-Private", b"x-private", b"Accept-Language", b"Trailer",
         b"Cache-Control", b"X-Real-IP", b"If-None-Match"]
CONNECTIONS = [None, b"keep-alive", b"close", b"keep-alive, X-Private", b"Accept-Language"]


class _Channel:
    transport = None


def _parse(head: bytes) -> FastRequest:
    """The request as the fast path makes it (fast.FastHTTPChannel._next_request)."""
    fields = _Head()
    parser = httptools.HttpRequestParser(fields)
    parser.feed_data(head)
    headers = ParsedHeaders()
    headers._rawHeaders = fields.headers
    headers.changed = False
    req = FastRequest(_Channel(), parser.get_method(), fields.url, headers, fields.close,
                      fields.underscore, None)
    if fields.copy_ok:
        req.upstream_copy = (fields.copy, len(fields.headers))
    return req


def _head(plan: RoutePlan, req: FastRequest, ctx: RequestContext) -> bytes | None:
    raw_path, _, query = req.uri.partition(b"?")
    return plan.head(req, ctx, req.method, raw_path, raw_path.decode("latin-1"), query,
                     None, None)


def _both(plan: RoutePlan, req: FastRequest, ctx: RequestContext) -> tuple[Any, Any]:
    taken = _head(plan, req, ctx)
    copy, req.upstream_copy = req.upstream_copy, None
    walked = _head(plan, req, ctx)
    req.upstream_copy = copy
    return taken, walked


def test_the_copied_lines_are_the_walked_headers():
    rng = random.Random(5)
    mappings = [_mapping(), _mapping(custom={"X-Env": "prod"}),
                _mapping(custom={"X-Other": "1"})]
    proxy = ReverseProxy(task.Clock(), None, lambda a, d: object())
    used = compared = 0
    for _ in range(1500):
        lines = [(rng.choice(NAMES), b"v%d" % rng.randint(0, 9))
                 for _ in range(rng.randint(0, 12))]
        connection = rng.choice(CONNECTIONS)
        if connection is not None:
            lines.insert(rng.randint(0, len(lines)), (b"Connection", connection))
        lines.insert(rng.randint(0, len(lines)), (b"Host", b"app.example"))
        head = (b"GET /p?q=%d HTTP/1.1\r\n" % rng.randint(0, 99)
                + b"".join(n + b": " + v + b"\r\n" for n, v in lines) + b"\r\n")
        req = _parse(head)
        entry = entry_from_mapping(rng.choice(mappings))
        route = entry.service.router.match("/p")
        plan = RoutePlan(route, entry.service, TargetOptions.of(route.options),
                         proxy.forwarded_proto, None)
        ctx = RequestContext(overlay=True, source_ip="100.64.0.10", host="app.example",
                             identity=rng.choice((None, ALICE)), service=entry.service,
                             route=route)
        taken, walked = _both(plan, req, ctx)
        assert taken == walked, head
        compared += 1
        used += req.upstream_copy is not None
    assert used > compared // 3  # most heads had their lines made


def test_a_name_given_twice_is_walked():
    req = _parse(b"GET / HTTP/1.1\r\nHost: a\r\nAccept: 1\r\nX-A: 2\r\naccept: 3\r\n\r\n")
    assert req.upstream_copy is None
    # a repeated dropped name leaves the lines usable
    req = _parse(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: 1\r\nX-A: 2\r\nCookie: 3\r\n\r\n")
    assert req.upstream_copy == ([b"X-A: ", b"2", b"\r\n"], 3)


def test_headers_dropped_after_the_parse_are_not_copied():
    entry = entry_from_mapping(_mapping())
    route = entry.service.router.match("/")
    plan = RoutePlan(route, entry.service, TargetOptions.of(route.options), "auto", None)
    ctx = RequestContext(overlay=True, source_ip="100.64.0.10", host="app.example",
                         identity=ALICE, service=entry.service, route=route)
    req = _parse(b"GET / HTTP/1.1\r\nHost: app.example\r\nX_Under: 1\r\nAccept: a\r\n\r\n")
    assert req.upstream_copy is not None
    req.requestHeaders.removeHeader(b"X_Under")  # what the front door does
    head = _head(plan, req, ctx)
    assert b"under" not in head.lower() and b"Accept: a\r\n" in head
    taken, walked = _both(plan, req, ctx)
    assert taken == walked
