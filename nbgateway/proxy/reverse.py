"""The streaming HTTP reverse proxy.

:class:`ReverseProxy` forwards one twisted.web request for an already looked
up :class:`ProxyService` (the auth layer decides first and passes the
validated :class:`~nbgateway.routes.identity.Identity`, or None):

- path routing with the mapping's :class:`~nbgateway.routes.paths.PathRouter`
  (no match: 404 ``Service Not Found``), path rewrite, ``session_token``
  stripped from the query;
- self-loop guard: an overlay request whose source IP equals the literal IP
  host of the selected target gets 421 ``Loop Detected``;
- outgoing headers from :func:`~nbgateway.proxy.headers.prepare_upstream_headers`
  (hop-by-hop, header-auth removal, custom headers, identity, X-Forwarded-*,
  Cookie minus ``nb_session``);
- upstream via the lean pooled HTTP/1.1 client (:mod:`nbgateway.dial.http11`,
  httptools/llhttp parser, request head built once as bytes) over the
  account's dialer (tunnel, or the host network for ``direct_upstream``) and
  a persistent per-account pool (:mod:`nbgateway.dial.pool`); every new
  connection is dialed through the dialer (guard or tunnel);
- the request itself -- upstream call, deadline, bodies streamed both ways
  with backpressure, response relay, errors and retries -- is one
  :class:`~nbgateway.proxy.exchange._Exchange` (:mod:`nbgateway.proxy.exchange`);
- optional per-account in-flight limit on the tunnel path (503);
- ``rewrite_redirects``; an unparseable ``Location`` is a 502;
- error pages with upstream's statuses (502/504/...); a ``direct_upstream``
  dial refused by the gateway's dial guard (:mod:`nbgateway.dial.guard`) is a
  502 ``Destination Not Allowed`` whose access-log entry carries the verdict
  ``direct_upstream_denied``;
- targets with ``upstream_protocol: h2`` (gRPC) go to
  :mod:`nbgateway.proxy.h2relay` (HTTP/2 upstream, trailers relayed);
- ``Upgrade`` requests (WebSocket) go to :mod:`nbgateway.proxy.upgrade`;
- several targets per path (:mod:`nbgateway.proxy.balance`): the path's
  policy picks the target among those in rotation; a transport failure before
  any response byte counts against the target (passive ejection), a response
  for it; a failed *dial* (the request never reached an upstream) of an
  idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) whose body was
  not consumed is retried on another target within the same deadline; POST
  and PATCH never are.  ``ctx.target`` names the target used.

The upstream response's ``Connection`` header is visible to the proxy, so
response headers named by it are removed with the standard hop-by-hop set.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web import server
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from nbgateway.dial.deadlines import Deadlines
from nbgateway.dial.fdbudget import account_share
from nbgateway.dial.http11 import LeanAgent
from nbgateway.proxy import pages
from nbgateway.proxy.balance import (
    IDEMPOTENT_METHODS,
    Balancers,
    TargetPool,
    TargetState,
)
from nbgateway.proxy.exchange import (
    _BytesProducer,
    _Exchange,
    client_ip,
)
from nbgateway.proxy.fast_request import FastRequest
from nbgateway.proxy.h2_lean import LeanH2Request
from nbgateway.proxy.headers import (
    TrustedProxies,
    canonical_name,
    prepare_upstream_headers,
)
from nbgateway.proxy.plan import RoutePlan
from nbgateway.routes.context import RequestContext
from nbgateway.routes.hosts import host_without_port
from nbgateway.routes.identity import Identity
from nbgateway.routes.paths import Route, outgoing_path
from nbgateway.routes.service import JWKS_PATH, ProxyService, TargetOptions

log = Logger()

DEFAULT_REQUEST_TIMEOUT = 30.0  # host dialer timeout upstream
_MAX_ROUTE_OPTIONS = 4096  # routes whose converted options are kept
_EXPECT, _CONTENT_LENGTH = map(canonical_name, ("Expect", "Content-Length"))


@functools.lru_cache(maxsize=4096)
def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # pure and called twice per request (target host, client address)
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_self_loop(overlay: bool, source_ip: str, route: Route) -> bool:
    """Loop check: overlay request whose source IP is the target's literal IP."""
    if not overlay:
        return False
    return _same_ip(route.host, source_ip)


@functools.lru_cache(maxsize=4096)
def _same_ip(host: str, source_ip: str) -> bool:
    # pure, asked per overlay request for the same few (target, peer) pairs
    target = _ip_literal(host)
    source = _ip_literal(source_ip)
    return target is not None and source is not None and target == source


DialerLookup = Callable[[str, bool], Any]


class ReverseProxy:
    """Forwards requests for :class:`ProxyService` mappings to their targets.

    ``dialer_for(account_id, direct_upstream)`` returns the account's
    ``IUpstreamDialer`` (None: 502 ``Proxy Not Connected``).
    ``max_dial_timeout`` caps the per-target request timeout (0: no cap).
    """

    def __init__(self, reactor: Any, pools: Any, dialer_for: DialerLookup, *,
                 clock: Any = None, default_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 max_dial_timeout: float = 0.0, forwarded_proto: str = "auto",
                 trusted_proxies: TrustedProxies | None = None,
                 upgrades: Any = None, max_inflight: int | None = None) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.pools = pools
        self.dialer_for = dialer_for
        self.default_timeout = default_timeout
        self.max_dial_timeout = max_dial_timeout
        self.forwarded_proto = forwarded_proto
        self.trusted_proxies = trusted_proxies
        #: exchanges in flight per account, every path (each holds the client's
        #: connection and, to a direct upstream, an OS socket); 0 = unlimited
        #: (default: a share of the process's descriptors, dial.fdbudget, at
        #: two per exchange)
        self.max_inflight = (account_share(per_item=2) if max_inflight is None
                             else max_inflight)
        #: ``(service, DirectUpstreamDeniedError)`` after a refused direct dial
        self.on_dial_denied: Callable[[ProxyService, Any], None] | None = None
        self.inflight: dict[str, int] = {}
        #: account -> its ``_release`` observer (made once per account)
        self._releasers: dict[str, Callable[[Any], Any]] = {}
        #: the load-balancing and health state of every multi-target path
        self.balancers = Balancers(self.clock)
        #: the request deadlines (dial + wait for the response head), one
        #: timer: the pools' (shared with their idle timeouts, stopped when
        #: they close) when they run on the same clock.  Always on this
        #: proxy's clock: an exchange arms its deadline from the upstream
        #: start read off it (``ctx.upstream_started``)
        shared = getattr(pools, "deadlines", None)
        self.deadlines: Deadlines = (
            shared if isinstance(shared, Deadlines) and shared.clock is self.clock
            else Deadlines(self.clock))
        self._route_options: dict[int, tuple[Route, TargetOptions]] = {}
        #: id(route) -> its RoutePlan (nbgateway.proxy.plan), bounded
        self._plans: dict[int, RoutePlan] = {}
        #: the identity assertion signer (``token(settings, identity, peer_ip,
        #: audience)``, nbgateway.auth.assertion), set by the service; without
        #: one a ``required`` service answers 503
        self.assertions: Any = None
        if upgrades is None:
            from nbgateway.proxy.upgrade import UpgradeRelay

            upgrades = UpgradeRelay(self)
        self.upgrades = upgrades
        #: the HTTP/2 relay for ``upstream_protocol: h2`` targets
        #: (:mod:`nbgateway.proxy.h2relay`), made on first use
        self.h2: Any = None

    def _acquire(self, account_id: str, request: Any) -> None:
        """One more exchange of the account in flight, until the response
        ends or the client is gone (the lean requests' ``on_finish`` observer,
        else a ``notifyFinish`` Deferred)."""
        inflight = self.inflight
        inflight[account_id] = inflight.get(account_id, 0) + 1
        release = self._releasers.get(account_id) or self._releaser(account_id)
        on_finish = getattr(request, "on_finish", None)
        if on_finish is not None:
            on_finish(release)
        else:
            request.notifyFinish().addBoth(release)

    def _releaser(self, account_id: str) -> Callable[[Any], Any]:
        """The account's ``_release`` observer, made once (bounded)."""
        if len(self._releasers) >= _MAX_ROUTE_OPTIONS:
            self._releasers.clear()
        release = self._releasers[account_id] = functools.partial(
            _release, self.inflight, account_id)
        return release

    def timeout_for(self, opts: TargetOptions) -> float:
        # (render does this inline: keep both in step)
        t = opts.request_timeout if opts.request_timeout > 0 else self.default_timeout
        if self.max_dial_timeout > 0 and (t <= 0 or t > self.max_dial_timeout):
            t = self.max_dial_timeout
        return t

    def upstream_headers(self, request: Any, service: ProxyService, route: Route,
                         opts: TargetOptions, identity: Identity | None,
                         keep_upgrade: bool = False,
                         ctx: RequestContext | None = None) -> Headers:
        """The outgoing headers.  ``ctx`` (optional): its ``host`` and
        ``source_ip``, when set, are the request's Host header (decoded) and
        client address as the front resource read them (not read again)."""
        host: Any = ctx.host if ctx is not None else ""
        if not host:
            host = request.getHeader(b"host") or b""
            if isinstance(host, bytes):
                host = host.decode("latin-1")
        peer = (ctx.source_ip if ctx is not None else "") or client_ip(request)
        headers = prepare_upstream_headers(
            request.requestHeaders,
            host_header=host,
            target_netloc=route.netloc,
            pass_host_header=service.pass_host_header,
            custom_headers=opts.custom_headers,  # read only
            header_auth_names=service.header_auth_names,
            identity=identity,
            client_ip=peer,
            over_tls=request.isSecure(),
            forwarded_proto=self.forwarded_proto,
            trusted_proxies=self.trusted_proxies,
            keep_upgrade=keep_upgrade,
            assertion=(self.assertion_for(request, service, identity)
                       if service.assertion is not None else None),
        )
        # twisted.web already answered "Expect: 100-continue" to the client;
        # the body framing is set by the client side from the body producer.
        raw = headers._rawHeaders  # names as Headers keeps them
        raw.pop(_EXPECT, None)
        raw.pop(_CONTENT_LENGTH, None)
        return headers

    def assertion_for(self, request: Any, service: ProxyService,
                      identity: Identity | None) -> str | None:
        """The signed identity assertion to stamp (None: none to stamp)."""
        if service.assertion is None or identity is None or self.assertions is None:
            return None
        return self.assertions.token(service.assertion, identity, client_ip(request),
                                     service.domain)

    def _relay_h2(self, request: Any, ctx: RequestContext, service: ProxyService,
                  route: Route, opts: TargetOptions, dialer: Any, timeout: float,
                  pool: Any = None, state: Any = None) -> None:
        """Send the request to an HTTP/2 target (gRPC): :mod:`nbgateway.proxy.h2relay`."""
        if self.h2 is None:
            from nbgateway.proxy.h2relay import H2Relay

            self.h2 = H2Relay(self)
        raw_path, _, query = request.uri.partition(b"?")
        target_path = outgoing_path(route, raw_path.decode("latin-1"), query.decode("latin-1"),
                                    opts.path_rewrite)
        headers = self.upstream_headers(request, service, route, opts, ctx.identity)
        ctx.upstream_started = self.clock.seconds()
        self.h2.relay(request, ctx, service, route, opts, dialer, target_path, timeout,
                      headers, _request_body(request), pool, state)

    def render(self, request: Any, ctx: RequestContext) -> Any:
        """Handle ``request`` for ``ctx.service`` (None: 404) with ``ctx.identity``
        (validated by the auth layer, or None); records the matched route and
        the upstream start in ``ctx``.  Always returns ``NOT_DONE_YET``."""
        service = ctx.service
        if service is None:
            pages.send_page(request, pages.SERVICE_NOT_FOUND)
            return server.NOT_DONE_YET
        raw_path, _, query = request.uri.partition(b"?")
        path = ctx.path  # the front resource's decode of raw_path, when it made one
        if path is None:
            path = raw_path.decode("latin-1")
        if path == JWKS_PATH and service.assertion is not None:
            _send_json(request, service.assertion.jwks())
            return server.NOT_DONE_YET
        route = service.router.match(path)
        if route is None:
            pages.send_page(request, pages.SERVICE_NOT_FOUND)
            return server.NOT_DONE_YET
        if route.group == () and not route.balancing.health_path:  # self._balance, inline
            pool = state = None
        else:
            pool, state = self._balance(service, route)
            if state is not None:
                route = state.route
        ctx.route = route
        ctx.target = route.origin
        checked = self._check(request, ctx, service, route)
        # (an isinstance() that fails reads the object's __class__: the
        # common tuple is told apart first)
        if type(checked) is not tuple and isinstance(checked, pages.ErrorPage):
            pages.send_page(request, checked, destination=route.target)
            return server.NOT_DONE_YET
        opts, dialer = checked
        # self.timeout_for(opts), inline
        timeout = opts.request_timeout if opts.request_timeout > 0 else self.default_timeout
        cap = self.max_dial_timeout
        if cap > 0 and (timeout <= 0 or timeout > cap):
            timeout = cap
        raw_in = request.requestHeaders._rawHeaders
        if _UPGRADE in raw_in and _is_upgrade(request):
            self._relay_upgrade(request, ctx, route, opts, dialer, path, query.decode("latin-1"),
                                pool, state)
            return server.NOT_DONE_YET
        if self.max_inflight > 0:
            # every path: a direct upstream's exchange holds an OS socket too.
            # self._acquire(account, request), inline for the fast path's request
            account_id = service.account_id
            inflight = self.inflight
            held = inflight.get(account_id, 0)
            if held >= self.max_inflight:
                pages.send_page(request, pages.SERVICE_OVERLOADED, destination=route.target)
                return server.NOT_DONE_YET
            if type(request) is FastRequest:
                inflight[account_id] = held + 1
                release = self._releasers.get(account_id) or self._releaser(account_id)
                hooks = request.finish_hooks
                if hooks:
                    hooks.append(release)  # type: ignore[union-attr]
                else:
                    request.finish_hooks = [release]
            else:
                self._acquire(account_id, request)
        if opts.upstream_protocol == "h2":
            self._relay_h2(request, ctx, service, route, opts, dialer, timeout, pool, state)
            return server.NOT_DONE_YET
        # _request_body(request); a bodiless request without a call
        # (the fast path's request has body_stream: a plain read, no getattr
        # call; the HTTP/2 lean route's too, at a site of its own)
        body = (None if ((request.body_stream if type(request) is FastRequest
                          else request.body_stream if type(request) is LeanH2Request
                          else getattr(request, "body_stream", None)) is None
                         and _CONTENT_LENGTH not in raw_in and _TRANSFER_ENCODING not in raw_in)
                else _request_body(request))
        # the route's plan (see proxy.plan): its head as one bytes join, and
        # the agent it last got from the pools for this dialer and timeout
        plan = self._plans.get(id(route))
        if plan is None or plan.route is not route or plan.service is not service:
            plan = self._plan(route, service, opts)
        hit = plan.agent
        if (hit is not None and hit[0] is dialer and hit[1] == timeout
                and not hit[2].pool.retired):
            agent = hit[2]  # the pools' answer for these arguments, as last time
        else:
            # positional: (account_id, dialer, direct, skip_verify, timeout)
            agent = self.pools.agent(service.account_id, dialer, opts.direct_upstream,
                                     opts.skip_tls_verify, timeout)
            if type(agent) is LeanAgent:
                plan.agent = (dialer, timeout, agent)
        head = None
        if plan.eligible and (type(agent) is LeanAgent
                              or getattr(agent, "send_head", None) is not None):
            # the query decoded only where the plan needs it as text
            head = plan.head(request, ctx, request.method, raw_path, path, query, None, body)
        # (path, query as bytes): a retry on another target decodes the query
        exchange = _Exchange(self, request, ctx, service, route, opts, pool, state,
                             (path, query))
        if head is not None:
            url = headers = None
            exchange.head = head
            exchange.key = plan.key
        else:
            url, headers = self._url_headers(request, ctx, service, route, opts, path,
                                             query.decode("latin-1"))
        ctx.upstream_started = self.clock.seconds()
        exchange.start(agent, request.method, url, headers, body, timeout)
        return server.NOT_DONE_YET

    def forget_account(self, account_id: str) -> None:
        """The account is gone: drop its routes' plans, and with them the
        agents (dialer, endpoint factory, the account's netstack) they keep."""
        plans = self._plans
        for key in [k for k, p in plans.items() if p.service.account_id == account_id]:
            del plans[key]

    def _plan(self, route: Route, service: ProxyService, opts: TargetOptions) -> RoutePlan:
        """The route's :class:`~nbgateway.proxy.plan.RoutePlan`, made once per
        (route, service) object pair (a mapping update makes new ones); the
        cache holds the route, so its id is not reused while cached."""
        plan = RoutePlan(route, service, opts, self.forwarded_proto, self.trusted_proxies)
        if len(self._plans) >= _MAX_ROUTE_OPTIONS:
            self._plans.clear()
        self._plans[id(route)] = plan
        return plan

    def _relay_upgrade(self, request: Any, ctx: RequestContext, route: Route,
                       opts: TargetOptions, dialer: Any, path: str, query: str,
                       pool: TargetPool | None, state: TargetState | None) -> None:
        """``Upgrade`` (WebSocket) to ``route``'s target; on a balanced path a
        failed dial of an idempotent upgrade without a body goes to another
        target of the path (each at most once)."""
        retry = None
        if (pool is not None and state is not None and request.method in IDEMPOTENT_METHODS
                and not _has_body(request)):
            tried = [state.key]

            def retry(exc: BaseException) -> bool:
                nxt = pool.pick(self.clock.seconds(), exclude=tried)
                if nxt is None:
                    return False
                checked = self._check(request, ctx, ctx.service, nxt.route)
                if isinstance(checked, pages.ErrorPage):
                    return False
                tried.append(nxt.key)
                log.info("retrying upgrade on another target: {target}",
                         target=nxt.route.origin, failed=repr(exc))
                ctx.route, ctx.target = nxt.route, nxt.route.origin
                self._send_upgrade(request, ctx, nxt.route, *checked, path, query, pool, nxt,
                                   retry)
                return True

        self._send_upgrade(request, ctx, route, opts, dialer, path, query, pool, state, retry)

    def _send_upgrade(self, request: Any, ctx: RequestContext, route: Route,
                      opts: TargetOptions, dialer: Any, path: str, query: str,
                      pool: TargetPool | None, state: TargetState | None, retry: Any) -> None:
        target_path = outgoing_path(route, path, query, opts.path_rewrite)
        self.upgrades.relay(request, ctx, route, opts, dialer, target_path,
                            self.timeout_for(opts), pool=pool, state=state, retry=retry)

    def _balance(self, service: ProxyService,
                 route: Route) -> tuple[TargetPool | None, TargetState | None]:
        """The pool and chosen target of a path with several targets (or
        active health checks); ``(None, None)`` for a plain single target."""
        if route.group == () and not route.balancing.health_path:  # not .active
            return None, None
        pool = self.balancers.pool(service.service_id or service.domain, route)
        return pool, pool.pick(self.clock.seconds())

    def _check(self, request: Any, ctx: RequestContext, service: ProxyService,
               route: Route) -> Any:
        """Can the request go to ``route``'s target (loop guard, dialer,
        identity assertion)?  An :class:`~nbgateway.proxy.pages.ErrorPage`
        if not, else ``(opts, dialer)``."""
        if ctx.overlay and _same_ip(route.host, ctx.source_ip or client_ip(request)):
            log.warn("self-loop request refused", client_ip=client_ip(request),
                     target=route.target)
            return pages.LOOP_DETECTED
        cached = self._route_options.get(id(route))
        opts = (cached[1] if cached is not None and cached[0] is route
                else self._options(route))
        dialer_for = self.dialer_for  # an instance's callable (see site.fast_route)
        dialer = dialer_for(service.account_id, opts.direct_upstream)
        if dialer is None:
            return pages.PROXY_NOT_CONNECTED
        if (service.assertion is not None and service.assertion.required
                and self.assertion_for(request, service, ctx.identity) is None):
            # required by the upstream: never forwarded unsigned
            log.warn("identity assertion unavailable", domain=service.domain)
            return pages.ASSERTION_UNAVAILABLE
        return opts, dialer

    def _options(self, route: Route) -> TargetOptions:
        """``TargetOptions.of(route.options)``, converted once per route (the
        cache holds the route, so its id is not reused while cached)."""
        cached = self._route_options.get(id(route))
        if cached is not None and cached[0] is route:
            return cached[1]
        opts = TargetOptions.of(route.options)
        if len(self._route_options) >= _MAX_ROUTE_OPTIONS:
            self._route_options.clear()
        self._route_options[id(route)] = (route, opts)
        return opts

    def _build(self, request: Any, ctx: RequestContext, service: ProxyService, route: Route,
               opts: TargetOptions, dialer: Any, path: str, query: str,
               timeout: float) -> tuple[Any, bytes, Headers]:
        """``(agent, url, headers)`` to send the request to ``route``'s target."""
        url, headers = self._url_headers(request, ctx, service, route, opts, path, query)
        agent = self.pools.agent(service.account_id, dialer, direct=opts.direct_upstream,
                                 skip_verify=opts.skip_tls_verify, timeout=timeout)
        return agent, url, headers

    def _url_headers(self, request: Any, ctx: RequestContext, service: ProxyService,
                     route: Route, opts: TargetOptions, path: str,
                     query: str) -> tuple[bytes, Headers]:
        """The upstream URL and headers (the general path, see ``_build``)."""
        target_path = outgoing_path(route, path, query, opts.path_rewrite)
        headers = self.upstream_headers(request, service, route, opts, ctx.identity, ctx=ctx)
        return f"{route.scheme}://{route.netloc}{target_path}".encode("latin-1"), headers

    def prepare(self, request: Any, ctx: RequestContext, service: ProxyService, route: Route,
                path: str, query: str) -> Any:
        """For a retry on another target: an ErrorPage if ``route`` cannot be
        used, else ``(agent, url, headers, opts, timeout)``."""
        checked = self._check(request, ctx, service, route)
        if isinstance(checked, pages.ErrorPage):
            return checked
        opts, dialer = checked
        timeout = self.timeout_for(opts)
        agent, url, headers = self._build(request, ctx, service, route, opts, dialer,
                                          path, query, timeout)
        return agent, url, headers, opts, timeout


def _send_json(request: Any, document: Any) -> None:
    body = json.dumps(document, separators=(",", ":")).encode()
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"max-age=60")
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


def _release(inflight: dict[str, int], account_id: str, _result: Any) -> None:
    """One exchange of the account ended (its response, or its client went
    away; a ``notifyFinish`` callback and errback alike)."""
    left = inflight.get(account_id, 0) - 1
    if left > 0:
        inflight[account_id] = left
    else:
        inflight.pop(account_id, None)


_UPGRADE, _CONTENT_LENGTH, _TRANSFER_ENCODING = map(
    canonical_name, ("Upgrade", "Content-Length", "Transfer-Encoding"))


def _is_upgrade(request: Any) -> bool:
    # the names as ``Headers`` keeps them: no name encoding per request
    if _UPGRADE not in request.requestHeaders._rawHeaders:
        return False
    tokens = set()
    for value in request.requestHeaders.getRawHeaders(b"connection") or []:
        tokens.update(t.strip().lower() for t in value.split(b","))
    return b"upgrade" in tokens


def _has_body(request: Any) -> bool:
    headers = request.requestHeaders
    return (headers.hasHeader(b"content-length") and headers.getRawHeaders(
        b"content-length") != [b"0"]) or headers.hasHeader(b"transfer-encoding")


def _request_body(request: Any) -> Any:
    stream = getattr(request, "body_stream", None)
    if stream is not None:
        return stream
    raw = request.requestHeaders._rawHeaders
    if _CONTENT_LENGTH not in raw and _TRANSFER_ENCODING not in raw:
        return None
    content = request.content
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    if size > _MAX_INLINE_BODY:
        # a plain twisted.web request spooled a large body to a temp file
        return FileBodyProducer(content)
    return _BytesProducer(content.read())


_MAX_INLINE_BODY = 64 * 1024


class ProxyResource(Resource):
    """A leaf resource serving every path of every known host through a
    :class:`ReverseProxy`.

    ``lookup(domain)`` returns the :class:`ProxyService` for a Host without
    port (exact match) or None.  ``context_of(request)`` makes the request's
    :class:`~nbgateway.routes.context.RequestContext` (default: a public,
    unauthenticated one); the looked-up service is recorded in it.
    """

    isLeaf = True

    def __init__(self, proxy: ReverseProxy, lookup: Callable[[str], ProxyService | None], *,
                 context_of: Callable[[Any], RequestContext] | None = None) -> None:
        super().__init__()
        self.proxy = proxy
        self.lookup = lookup
        self.context_of = context_of or (lambda r: RequestContext())

    def render(self, request: Any) -> Any:
        host = request.getHeader(b"host") or b""
        domain = host_without_port(host.decode("latin-1") if isinstance(host, bytes) else host)
        ctx = self.context_of(request)
        ctx.service = self.lookup(domain)
        return self.proxy.render(request, ctx)
