"""The route plan's upstream request head (nbgateway.proxy.plan) against the
general path (ReverseProxy's URL and prepared headers, serialised by the
upstream client's request_head), and the plan's lifetime: a mapping update
makes a new plan."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache
from nbgateway.dial.http11_wire import request_head, split_url
from nbgateway.http.site import GatewayResource
from nbgateway.proxy.exchange import _BytesProducer
from nbgateway.proxy.headers import TrustedProxies
from nbgateway.proxy.plan import RoutePlan
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.context import RequestContext
from nbgateway.routes.identity import Identity
from nbgateway.routes.service import TargetOptions, entry_from_mapping
from nbgateway.routes.table import ServiceTable
from tests.lean_upstreams import InMemoryPools


class _Request:
    def __init__(self, method: bytes, uri: bytes, headers: list[tuple[bytes, bytes]],
                 secure: bool) -> None:
        self.method = method
        self.uri = uri
        self.requestHeaders = Headers()
        for name, value in headers:
            self.requestHeaders.addRawHeader(name, value)
        self.secure = secure

    def isSecure(self) -> bool:
        return self.secure

    def getClientAddress(self) -> Any:
        return IPv4Address("TCP", "100.64.0.10", 40000)

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None


class _Chunked:
    length = object()  # unknown: chunked


def _mapping(path: str = "/", target: str = "http://127.0.0.1:8081/", *,
             custom: dict[str, str] | None = None, preserve: bool = False,
             pass_host: bool = False) -> pb.ProxyMapping:
    opts = pb.PathTargetOptions(direct_upstream=True, custom_headers=custom or {})
    if preserve:
        opts.path_rewrite = pb.PATH_REWRITE_PRESERVE
    return pb.ProxyMapping(id="svc", account_id="acct", domain="app.example", private=True,
                           pass_host_header=pass_host,
                           path=[pb.PathMapping(path=path, target=target, options=opts)])


def _general(proxy: ReverseProxy, request: _Request, ctx: RequestContext, body: Any) -> bytes:
    """The head the general path sends (LeanAgent._attempt's serialisation)."""
    service, route = ctx.service, ctx.route
    opts = TargetOptions.of(route.options)
    raw_path, _, query = request.uri.partition(b"?")
    url, headers = proxy._url_headers(request, ctx, service, route, opts,
                                      raw_path.decode("latin-1"), query.decode("latin-1"))
    _scheme, _host, _port, netloc, path = split_url(url)
    if body is None:
        length: int | None = 0 if request.method in (b"POST", b"PUT", b"PATCH") else -1
    else:
        length = body.length if isinstance(body.length, int) else None
    return request_head(request.method, path, headers, netloc, length)


def _planned(proxy: ReverseProxy, request: _Request, ctx: RequestContext,
             body: Any) -> bytes | None:
    service, route = ctx.service, ctx.route
    opts = TargetOptions.of(route.options)
    plan = RoutePlan(route, service, opts, proxy.forwarded_proto, proxy.trusted_proxies)
    if not plan.eligible:
        return None
    raw_path, _, query = request.uri.partition(b"?")
    return plan.head(request, ctx, request.method, raw_path, raw_path.decode("latin-1"), query,
                     query.decode("latin-1"), body)


ALICE = Identity("u1", "alice@example.com", ("g1", "g2"), ("devs", ""))
HEADER_SETS = [
    [(b"Host", b"app.example"), (b"User-Agent", b"t"), (b"Accept", b"*/*")],
    [(b"host", b"app.example:80"), (b"x-netbird-user", b"mallory"),
     (b"X-Forwarded-For", b"1.2.3.4"), (b"Cookie", b"a=1; nb_session=s; b=2"),
     (b"Cookie", b"c=3"), (b"Accept", b"a"), (b"accept", b"b")],
    [(b"Host", b"app.example"), (b"Connection", b"keep-alive, X-Private"),
     (b"X-Private", b"p"), (b"Keep-Alive", b"5"), (b"Content-Length", b"3"),
     (b"Expect", b"100-continue"), (b"X-Env", b"client")],
    [(b"Host", b"app.example"), (b"Cookie", b"nb_session=only"), (b"X_Under", b"u"),
     (b"Proxy-Authorization", b"x"), (b"Forwarded", b"for=1.1.1.1")],
    [(b"Host", b"app.example"), (b"Transfer-Encoding", b"chunked"), (b"TE", b"trailers")],
]
MAPPINGS = [
    _mapping(),
    _mapping(custom={"X-Env": "prod", "X-NetBird-User": "forced", "X-Forwarded-For": "z",
                     "Content-Length": "9", "Cookie": "k=v"}),
    _mapping("/api", "http://[fd00::1]:9000/v1?x=1"),
    _mapping("/api", "https://backend.internal/", preserve=True, pass_host=True),
    _mapping(custom={"Host": "forced.example"}),
]
URIS = [b"/index.html?q=1", b"/api/x", b"//double", b"/api?session_token=t&a=b", b"/a?"]
BODIES = [None, _BytesProducer(b"abc"), _Chunked()]


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_the_plan_head_is_the_general_path_head(mapping: pb.ProxyMapping) -> None:
    entry = entry_from_mapping(mapping)
    planned_any = 0
    for trusted, proto in ((None, "auto"), (None, "https"), (TrustedProxies(["10.0.0.0/8"]),
                                                            "auto")):
        proxy = ReverseProxy(task.Clock(), None, lambda a, d: object(), forwarded_proto=proto,
                             trusted_proxies=trusted)
        for headers, uri, body, method, identity, secure in itertools.product(
                HEADER_SETS, URIS, BODIES, (b"GET", b"POST", b"HEAD"), (None, ALICE),
                (False, True)):
            request = _Request(method, uri, headers, secure)
            route = entry.service.router.match(uri.partition(b"?")[0].decode("latin-1"))
            if route is None:
                continue
            ctx = RequestContext(overlay=True, source_ip="100.64.0.10",
                                 host=request.getHeader(b"host").decode("latin-1"),
                                 identity=identity, service=entry.service, route=route)
            planned = _planned(proxy, request, ctx, body)
            if planned is None:
                # only where the general path does something the plan does not
                assert (trusted is not None or any(n.lower() == b"te" for n, _ in headers)
                        or "Host" in TargetOptions.of(route.options).custom_headers
                        or b"X-Env" in [n for n, _ in headers])
                continue
            planned_any += 1
            assert planned == _general(proxy, request, ctx, body), (headers, uri, body)
    # a custom Host header: the general path always; else the plan serves most
    assert planned_any == 0 if "Host" in mapping.path[0].options.custom_headers else planned_any


def test_a_long_host_is_never_kept_in_the_plan() -> None:
    entry = entry_from_mapping(_mapping())
    proxy = ReverseProxy(task.Clock(), None, lambda a, d: object())
    route = entry.service.router.match("/")
    plan = RoutePlan(route, entry.service, TargetOptions.of(route.options), "auto", None)
    long_host = "a" * 300 + ".example"
    request = _Request(b"GET", b"/", [(b"Host", long_host.encode())], False)
    ctx = RequestContext(overlay=True, source_ip="100.64.0.10", host=long_host,
                         service=entry.service, route=route)
    head = plan.head(request, ctx, b"GET", b"/", "/", b"", "", None)
    assert head == _general(proxy, request, ctx, None)
    assert plan.tails == {}


class _Mgmt:
    answer = pb.ValidateTunnelPeerResponse(valid=True, user_id="u1",
                                           user_email="alice@example.com",
                                           session_token="TOKEN")

    def validate_tunnel_peer(self, tunnel_ip: str, domain: str,
                             account_id: str = "") -> defer.Deferred:
        return defer.succeed(self.answer)


def test_a_request_after_a_mapping_update_uses_the_new_plan() -> None:
    """The plan is per (route, service) object: an updated mapping's request
    goes to the new target with the new custom headers and path."""
    clock = task.Clock()
    table = ServiceTable()
    table.entries["app.example"] = entry_from_mapping(_mapping(custom={"X-Env": "one"}))
    pools = InMemoryPools(clock)
    proxy = ReverseProxy(clock, pools, lambda a, d: object(), clock=clock)
    gate = PrivateGate(TunnelValidationCache(_Mgmt(), clock), lambda a, ip: True)
    res = GatewayResource(lookup=table.lookup, proxy=proxy, gate=gate, listener_account="acct",
                          clock=clock)
    channel = ProxySite(res, reactor=clock, fast=True).buildProtocol(None)
    client = StringTransport(peerAddress=IPv4Address("TCP", "100.64.0.10", 40000),
                             hostAddress=IPv4Address("TCP", "100.64.0.1", 80))
    channel.makeConnection(client)
    request = b"GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    channel.dataReceived(request)
    wire, proto = pools.upstreams[-1]
    first = wire.value()
    wire.clear()
    proto.dataReceived(answer)
    assert first.startswith(b"GET /x HTTP/1.1\r\n")
    assert b"\r\nX-Env: one\r\n" in first
    assert b"\r\nX-Netbird-User: alice@example.com\r\n" in first
    assert len(proxy._plans) == 1

    table.entries["app.example"] = entry_from_mapping(
        _mapping("/", "http://127.0.0.2:8082/base/", custom={"X-Env": "two"}))
    channel.dataReceived(request)
    wire, proto = pools.upstreams[-1]
    assert len(pools.upstreams) == 2  # the new target: a new connection
    second = wire.value()
    proto.dataReceived(answer)
    assert second.startswith(b"GET /base/x HTTP/1.1\r\n")
    assert b"\r\nX-Env: two\r\n" in second and b"X-Env: one" not in second
    assert b"\r\nHost: 127.0.0.2:8082\r\n" in second
    assert client.value().count(b"HTTP/1.1 200 OK\r\n") == 2
