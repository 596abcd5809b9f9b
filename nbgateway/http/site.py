"""The gateway's front resource: everything between a parsed HTTP request and
the reverse proxy.

One :class:`GatewayResource` serves one listener.  A tunnel (inbound)
listener knows its account (``listener_account``); the public listener has
none.  Per request, in order:

0. Front door (issue 11.3, 11.9): a duplicate ``Host`` is 400; an
   absolute-form target is routed by its authority and forwarded in origin
   form (RFC 9112 3.2.2); header names containing ``_`` are dropped unless
   ``allow_underscore_headers`` (nginx's default: a CGI/WSGI upstream would
   merge ``X_NetBird_User`` into ``X-NetBird-User``).
1. Host (port stripped, :func:`~nbgateway.routes.hosts.domain_key`) ->
   :class:`ServiceEntry`; unknown -> 404.  On a tunnel listener an explicit
   Host port other than the listener's is 421 (the public listener ignores
   it: it may sit behind a port mapping).
2. Hardening: on an inbound listener, a service of another
   account is 404 -- accounts never see each other's domains.
3. Access restrictions (CIDR; on the public listener also geo/CrowdSec) ->
   403 ``Forbidden``.
4. Private service: only on an inbound listener, only after the
   :class:`~nbgateway.auth.tunnel.PrivateGate` says yes; anything else is 403
   ``Forbidden``.  Operator schemes are never consulted.  Success installs the
   session cookie and hands the validated identity to the proxy.
5. Public service without schemes: forwarded without identity.  A service
   with operator schemes (password/PIN/OIDC/header) runs the sans-IO
   :class:`~nbgateway.auth.policy.Protect` order (OAuth ``?error=``,
   ``nb_session`` cookie verified locally, header schemes, tunnel-peer fast
   path, OIDC-over-TLS, scheme loop); this adapter makes the RPCs it asks
   for, reads the login form (urlencoded, at most :data:`MAX_FORM_BODY`
   bytes, CSRF-checked by :mod:`nbgateway.auth.csrf`) and renders the
   login/denied pages of :mod:`nbgateway.http.login`.  For a service with a
   client CA it first judges the connection's client certificate
   (:mod:`nbgateway.http.clientcert`, mTLS).
6. One access-log entry when the response finishes (not for hosts this gateway
   does not serve).

Client-supplied ``X-NetBird-*`` headers never reach an upstream: the proxy's
header preparation strips them on every path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from nbgateway.auth import csrf
from nbgateway.auth.mtls import MtlsVerifier
from nbgateway.auth.ratelimit import AttemptLimiter
from nbgateway.auth.session import SessionVerifier
from nbgateway.auth.tunnel import GateDecision, PrivateGate, session_cookie
from nbgateway.http.login import send_plain
from nbgateway.http.operator_auth import (  # noqa: F401 (re-exported)
    MAX_FORM_BODY,
    MAX_QUERY_FIELDS,
    OperatorAuth,
)
from nbgateway.observe.accesslog import (
    AccessLogger,
    entry_from_fields,
    new_log_id,
)
from nbgateway.proxy.fast import FastHTTPChannel
from nbgateway.proxy.fast_request import FastRequest
from nbgateway.proxy.h2_lean import LeanH2Request
from nbgateway.proxy.headers import canonical_name, drop_underscore_headers
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.routes.context import RequestContext
from nbgateway.routes.hosts import domain_key, host_port, host_without_port, split_absolute_form
from nbgateway.routes.restrictions import parse_ip
from nbgateway.routes.service import ServiceEntry

log = Logger()

#: Host header value -> (host, routing key): both asked for per request (the
#: fast path's ``fast_route``, then ``render``); bounded (entries, and values
#: up to ``_HOST_CACHED_LEN`` bytes), cleared when full
_HOSTS: dict[bytes, tuple[str, str]] = {}
_HOSTS_MAX = 4096
_HOST_CACHED_LEN = 256


#: (session token, max age) -> the sanitised ``Set-Cookie`` value the
#: private gate's answer sets on every response (bounded, cleared when full)
_COOKIES: dict[tuple[str, int], bytes] = {}
_COOKIES_MAX = 4096
_SET_COOKIE = canonical_name("Set-Cookie")
_HOST = canonical_name("Host")
#: the access log's method text of the common methods (a dict read, not a
#: codec call per request); others are decoded
_METHOD_TEXT = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                         "OPTIONS")}


def _session_cookie(token: str, max_age: int) -> bytes:
    key = (token, max_age)
    value = _COOKIES.get(key)
    if value is None:
        # through the public API once: sanitised as addRawHeader does
        h = Headers()
        h.addRawHeader(b"set-cookie", session_cookie(token, max_age).encode("latin-1"))
        value = h.getRawHeaders(b"set-cookie")[0]
        if isinstance(token, str) and len(token) <= 1024:
            if len(_COOKIES) >= _COOKIES_MAX:
                _COOKIES.clear()
            _COOKIES[key] = value
    return value


def _host_and_domain(raw: Any) -> tuple[str, str]:
    """``(host, domain_key(host_without_port(host)))`` of a Host value."""
    if type(raw) is not bytes:
        host = raw if isinstance(raw, str) else ""
        return host, domain_key(host_without_port(host))
    hit = _HOSTS.get(raw)
    if hit is None:
        host = raw.decode("latin-1")
        hit = (host, domain_key(host_without_port(host)))
        if len(raw) <= _HOST_CACHED_LEN:
            if len(_HOSTS) >= _HOSTS_MAX:
                _HOSTS.clear()
            _HOSTS[raw] = hit
    return hit

FORBIDDEN_BODY = b"Forbidden\n"
MISDIRECTED_BODY = b"Misdirected Request: the Host port is not this listener's port\n"


class GatewayResource(OperatorAuth, Resource):
    isLeaf = True
    #: the channel a ProxySite serves this resource with (its HTTP/1.1 fast path)
    fast_protocol = FastHTTPChannel

    def __init__(
        self,
        *,
        lookup: Callable[[str], ServiceEntry | None],
        proxy: ReverseProxy,
        gate: PrivateGate | None,
        listener_account: str | None = None,
        access_log: AccessLogger | None = None,
        clock: Any = None,
        request_stats: Any = None,
        allow_underscore_headers: bool = False,
        auth_client: Any = None,
        verifier: SessionVerifier | None = None,
        form_tokens: csrf.FormTokens | None = None,
        limiter: AttemptLimiter | None = None,
        mtls: MtlsVerifier | None = None,
    ) -> None:
        super().__init__()
        #: mTLS client certificates (share one across listeners)
        self.mtls = mtls if mtls is not None else MtlsVerifier()
        #: Authenticate/GetOIDCURL/ValidateSession; defaults to the gate's client
        self.auth_client = auth_client if auth_client is not None else (
            getattr(getattr(gate, "cache", None), "client", None))
        self.verifier = verifier if verifier is not None else SessionVerifier()
        self.form_tokens = form_tokens if form_tokens is not None else csrf.FormTokens()
        #: secret guesses per (service, client IP); share one across listeners
        self.limiter = limiter if limiter is not None else AttemptLimiter()
        self.lookup = lookup
        self.proxy = proxy
        self.gate = gate
        self.listener_account = listener_account
        self.access_log = access_log
        #: the access log's tuple intake (AccessLogger.record), else entries go to .log
        self._record = getattr(access_log, "record", None)
        self.clock = clock if clock is not None else proxy.clock
        self.request_stats = request_stats  # observe.metrics.RequestStats
        #: forward header names containing "_" (nginx: underscores_in_headers)
        self.allow_underscore_headers = allow_underscore_headers
        self.underscore_dropped = 0
        self.rejected: dict[int, int] = {}  # status -> requests refused at the front door
        #: the finish observer's function, bound once (reading a method as an
        #: attribute per request is a generic lookup and a new bound method)
        self._finished_hook = self._finished

    # ------------------------------------------------------------------ request

    def fast_route(self, host: bytes) -> tuple[str, ServiceEntry | None] | None:
        """May the listener's HTTP/1.1 fast path (:mod:`nbgateway.proxy.fast`)
        serve a request for ``host``?  Everything but a public service with
        operator schemes (login pages, forms, cookies: twisted.web's path).

        Yes is the route found, ``(routing key, entry or None)``: the fast
        path hands it on as ``request.routed`` when it dispatches the request
        in the same turn, and :meth:`render` uses it instead of a second
        lookup (a request that waits for its body is looked up again)."""
        hit = _HOSTS.get(host) or _host_and_domain(host)
        domain = hit[1]
        # the instance's callable read as an attribute, then called: a call
        # through self.lookup(...) is a method lookup CPython 3.11 never
        # specialises for an instance attribute (a generic lookup per call)
        lookup = self.lookup
        entry = lookup(domain)
        if entry is None or entry.private or not entry.has_schemes:
            return (domain, entry)
        return None

    def render(self, request: Any) -> Any:
        overlay = self.listener_account is not None
        # the fast path's request has the attributes read below (plain reads,
        # which CPython specialises; a getattr() call each costs ~10x more);
        # the HTTP/2 lean route's has them too, read at sites of their own
        # (a site specialises for one type: shared, it would fall back to
        # the generic read for one route whenever both serve)
        fast = type(request) is FastRequest
        lean = fast or type(request) is LeanH2Request
        hosts = request.requestHeaders._rawHeaders.get(_HOST)  # request.getHeader(b"host")
        if ((hosts is None or len(hosts) == 1) and request.uri[:1] == b"/"
                and (request.underscore_names if fast
                     else request.underscore_names if lean
                     else getattr(request, "underscore_names", True)) is False):
            problem = None  # self._front_door(request) of a head it passes as it is
        else:
            problem = self._front_door(request)
            hosts = request.requestHeaders._rawHeaders.get(_HOST)
        if problem is not None:
            code, body = problem
            self.rejected[code] = self.rejected.get(code, 0) + 1
            log.debug("refused at the front door: {code} {reason}", code=code,
                      reason=body.decode("latin-1").strip(),
                      client=str(getattr(request.getClientAddress(), "host", "")))
            # a request this malformed ends the connection: whatever follows
            # on it was framed by a client we no longer trust
            request.setHeader(b"connection", b"close")
            if getattr(request, "channel", None) is not None:
                request.channel.persistent = False
            send_plain(request, code, body)
            return server.NOT_DONE_YET
        raw_host = hosts[-1] if hosts else b""
        host, domain = _HOSTS.get(raw_host) or _host_and_domain(raw_host)
        # the fast path's fast_route answer
        routed = (request.routed if fast else request.routed if lean
                  else getattr(request, "routed", None))
        entry = (routed[1] if routed is not None and routed[0] == domain
                 else self.lookup(domain))
        if (entry is not None and overlay
                and entry.service.account_id != self.listener_account):
            # another account's name on this account's tunnel: unknown here,
            # and never logged into the other account's access log
            entry = None
        # the fast path's, per connection
        peer_ip = (request.peer_ip if fast else request.peer_ip if lean
                   else getattr(request, "peer_ip", None))
        if peer_ip is None:
            peer_ip = str(getattr(request.getClientAddress(), "host", "") or "")
        # positional (the field order): RequestContext(overlay=..., source_ip=...,
        # host=..., listener_account=..., started=...) and ctx.serve(entry)
        ctx = RequestContext(overlay, peer_ip, host, self.listener_account, entry,
                             entry.service if entry is not None else None, None, "", None,
                             "", "", "", self.clock.seconds())
        # the request's one finish observer: request stats and the access-log
        # entry (unknown hosts are not logged: management rejects entries
        # without an account, so each would only cost a failed RPC, an
        # amplification)
        stats = self.request_stats
        path: str | None = None
        if self.access_log is not None and entry is not None:
            # the request's path (its uri up to "?", kept in step with the
            # uri by _front_door), decoded once: the proxy reuses ctx.path
            path = ctx.path = (request.path if fast else request.path if lean
                               else request.uri.split(b"?", 1)[0]).decode("latin-1")
            # every request of a served host is logged, /__netbird__/ paths
            # too: the gateway serves nothing there, so they reach the
            # tenant's upstream (unlogged they were an audit-trail bypass,
            # /__netbird__/../admin included)
            ctx.request_id = new_log_id(ctx.started)
        if stats is not None:
            stats.active += 1  # stats.started(), inline
        if stats is not None or path is not None:
            fn = functools.partial(self._finished_hook, request, ctx, path)
            if fast:  # noqa: SIM114 (request.on_finish(fn), inline: the first observer, typically)
                hooks = request.finish_hooks
                if hooks:
                    hooks.append(fn)
                else:
                    request.finish_hooks = [fn]
            elif lean:  # the same, at sites of its own (one type per site)
                hooks = request.finish_hooks
                if hooks:
                    hooks.append(fn)
                else:
                    request.finish_hooks = [fn]
            else:
                hook = getattr(request, "on_finish", None)
                if hook is not None:
                    hook(fn)
                else:
                    request.notifyFinish().addBoth(fn)
        if entry is None:
            return self.proxy.render(request, ctx)
        if overlay and ":" in host and not self._port_matches(request, host):
            self.rejected[421] = self.rejected.get(421, 0) + 1
            send_plain(request, 421, MISDIRECTED_BODY)
            return server.NOT_DONE_YET
        if entry.restrictions is not None:
            addr = parse_ip(peer_ip)
            verdict = "ip_restricted" if addr is None else entry.restrictions.check(addr, overlay)
            if verdict is not None:
                ctx.auth_mechanism = verdict
                send_plain(request, 403, FORBIDDEN_BODY)
                return server.NOT_DONE_YET
        if not entry.private and not entry.has_schemes:
            return self.proxy.render(request, ctx)
        if not entry.private:
            return self._protect(request, ctx, entry)
        if not overlay or self.gate is None:
            send_plain(request, 403, FORBIDDEN_BODY)  # private: never on the public listener
            return server.NOT_DONE_YET
        gate = self.gate
        # the gateway's PrivateGate has decide_now: called as a method (the
        # interpreter specialises that; reading it as an attribute makes a
        # bound method through a generic lookup), others' probed with getattr
        if type(gate) is PrivateGate:
            service = entry.service  # positional: keywords cost a call ~36 ns
            decision = gate.decide_now(self.listener_account, service.account_id,
                                       service.domain, peer_ip)
        else:
            decide_now = getattr(gate, "decide_now", None)
            decision = None if decide_now is None else decide_now(
                listener_account=self.listener_account,
                mapping_account=entry.service.account_id,
                domain=entry.service.domain, client_ip=peer_ip)
        if decision is not None:
            # the common case (a cached validation, or a local refusal) is
            # decided here and now: no Deferred and callback chain per request
            try:
                self._decided(decision, request, ctx, entry)
            except Exception:
                self._gate_failed(Failure(), request)
            return server.NOT_DONE_YET
        d: Deferred = self.gate.check(
            listener_account=self.listener_account,
            mapping_account=entry.account_id,
            domain=entry.service.domain,
            client_ip=peer_ip,
        )
        d.addCallback(self._decided_later, request, ctx, entry)
        d.addErrback(self._gate_failed, request)
        return server.NOT_DONE_YET

    def _front_door(self, request: Any) -> tuple[int, bytes] | None:
        """Request-target and header hygiene before routing; an error answer
        or None.  Mutates the request: an absolute-form target becomes origin
        form with its authority as the Host (RFC 9112 3.2.2), and header names
        spelled with ``_`` are dropped (see :func:`drop_underscore_headers`)."""
        headers = request.requestHeaders
        hosts = headers._rawHeaders.get(_HOST) or ()
        if len(hosts) > 1:
            if not (request.clientproto == b"HTTP/2" and len(hosts) == 2
                    and hosts[0] == hosts[1]):
                return 400, b"Bad Request: duplicate Host header\n"
            # HTTP/2 :authority and an equal Host field (RFC 9113 8.3.1; h2
            # refuses unequal ones and a second Host): one name
            headers._rawHeaders[_HOST] = hosts[:1]
        if request.method == b"CONNECT":
            # an origin-form CONNECT (HTTP/1.1) or HTTP/2's extended CONNECT
            # (:protocol): no tunnels are served (and an upstream must not be
            # sent a CONNECT); the fast paths never take one
            return 400, b"Bad Request: CONNECT is not served\n"
        try:
            # an origin-form target (the common case) is not absolute form
            absolute = (None if request.uri[:1] == b"/"
                        else split_absolute_form(request.uri))
        except ValueError:
            return 400, b"Bad Request: invalid request target\n"
        if absolute is not None:
            authority, origin = absolute
            headers.setRawHeaders(b"host", [authority])
            request.uri = origin
            request.path = origin.split(b"?", 1)[0]
        elif not request.uri.startswith(b"/") and not (
                request.uri == b"*" and request.method == b"OPTIONS"):
            # authority form (CONNECT) or garbage: this is no forward proxy
            return 400, b"Bad Request: invalid request target\n"
        if getattr(request, "underscore_names", True):  # the fast path knows from its parse
            self.underscore_dropped += drop_underscore_headers(
                headers, allow=self.allow_underscore_headers)
        return None

    @staticmethod
    def _port_matches(request: Any, host: str) -> bool:
        """Tunnel listeners only: an explicit Host port must be the port the
        connection arrived on (peers reach the tunnel address directly, so a
        different port means the request was meant for another server)."""
        port = host_port(host)
        if port is None:
            return True
        local = getattr(request.getHost(), "port", None)
        return local is None or int(port) == local

    def still_served(self, entry: ServiceEntry) -> bool:
        """After an RPC: is ``entry`` still its domain's service, in this
        listener's account?  The mapping may have been removed, or the
        domain handed to another account, while the RPC ran; management
        then answered for the domain's new owner (a peer of that account
        at the same tunnel address: accounts' tunnel ranges overlap)."""
        current = self.lookup(entry.service.domain)
        return (current is not None
                and current.service.service_id == entry.service.service_id
                and (self.listener_account is None
                     or current.service.account_id == self.listener_account))

    def _decided_later(self, decision: GateDecision, request: Any, ctx: RequestContext,
                       entry: ServiceEntry) -> None:
        """The gate's RPC answered: applied only while the domain is still
        this service's (the synchronous ``decide_now`` path runs in the same
        turn as the lookup and needs no check)."""
        if decision.allowed and not self.still_served(entry):
            log.info("gate answer for {domain} dropped: the service changed while the "
                     "RPC ran", domain=entry.service.domain)
            decision = GateDecision(False, "service_changed")
        self._decided(decision, request, ctx, entry)

    def _decided(self, decision: GateDecision, request: Any, ctx: RequestContext,
                 entry: ServiceEntry) -> None:
        if ((request._disconnected if type(request) is FastRequest
             else request._disconnected if type(request) is LeanH2Request
             else getattr(request, "_disconnected", False)) or request.finished):
            return
        if not decision.allowed:
            log.debug("denied {domain}: {reason}", domain=entry.service.domain,
                      reason=decision.reason)
            if entry.private:
                send_plain(request, 403, FORBIDDEN_BODY)
            else:
                send_plain(request, 401, b"Unauthorized\n")
            return
        token = decision.session_token
        cookie = (_COOKIES.get((token, entry.session_max_age))
                  or _session_cookie(token, entry.session_max_age))
        raw = request.responseHeaders._rawHeaders
        values = raw.get(_SET_COOKIE)
        if values is None:
            raw[_SET_COOKIE] = [cookie]
        else:
            values.append(cookie)
        identity = decision.identity  # ctx.authenticated(identity, "oidc"), inline
        ctx.identity = identity
        ctx.auth_mechanism = "oidc"
        ctx.user_id = identity.user_id if identity is not None else ""
        self.proxy.render(request, ctx)

    def _gate_failed(self, failure, request: Any) -> None:
        log.failure("private gate failed; denying", failure)
        if not request.finished and not getattr(request, "_disconnected", False):
            send_plain(request, 403, FORBIDDEN_BODY)

    # ------------------------------------------------------------------ observation

    def _finished(self, request: Any, ctx: RequestContext, path: str | None,
                  _result: Any) -> None:
        """The response ended (or the client went away): count it, and hand
        the access log one tuple of the entry's fields (the shipper builds
        the ``AccessLog`` message when it forms a batch, see
        :meth:`~nbgateway.observe.accesslog.AccessLogger.record`)."""
        now = self.clock.seconds()
        stats = self.request_stats
        if stats is not None:
            stats.finished(request.code, now - ctx.started)
        if path is None:
            return
        service = ctx.entry.service
        if type(request) is FastRequest:  # noqa: SIM114 (its own attributes: plain reads)
            body = request.body_stream
            received = (body.received if body is not None
                        else 0 if request.content is None else _content_length(request))
            sent = request.sentLength
        elif type(request) is LeanH2Request:  # the same, at sites of its own (one type per site)
            body = request.body_stream
            received = (body.received if body is not None
                        else 0 if request.content is None else _content_length(request))
            sent = request.sentLength
        else:
            body = getattr(request, "body_stream", None)
            received = (body.received if body is not None
                        else 0 if getattr(request, "content", None) is None
                        else _content_length(request))
            sent = getattr(request, "sentLength", 0)
        fields = (
            now, ctx.request_id, service.account_id, service.service_id, ctx.host, path,
            _METHOD_TEXT.get(request.method) or request.method.decode("latin-1"),
            request.code, int((now - ctx.started) * 1000),
            ctx.source_ip, ctx.auth_mechanism, ctx.user_id, received, sent, ctx.target,
        )
        record = self._record  # an instance's callable: see fast_route
        if record is not None:
            record(fields)
        else:
            self.access_log.log(entry_from_fields(fields))  # type: ignore[union-attr]


def _content_length(request: Any) -> int:
    content = getattr(request, "content", None)
    if content is None:  # the fast path's bodiless request
        return 0
    try:
        pos = content.tell()
        content.seek(0, 2)
        size = content.tell()
        content.seek(pos)
        return size
    except Exception:
        return 0
