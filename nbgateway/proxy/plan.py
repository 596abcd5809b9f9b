"""The upstream request head as one bytes join, from a per-(route, service)
plan (sans-IO).

A :class:`RoutePlan` holds what every request to one route's target shares:
the target's options, its pool key ``(scheme, host, port)`` and, per
(identity, client address, Host, TLS) as seen so far, the header lines the
proxy appends after the client's own: custom headers, the identity headers,
``X-Forwarded-*``/``X-Real-IP`` and ``Host``.  Those lines are made once,
by :func:`~nbgateway.proxy.headers.prepare_upstream_headers` itself on an
empty set of inbound headers, so they are the general path's bytes by
construction.  A request then costs one pass over its own headers (the
dropped ones skipped, the rest copied as they are) and one ``bytes`` join:
no ``Headers`` object, no URL built and split again, no second pass in the
upstream client (:meth:`~nbgateway.dial.http11.LeanAgent.send_head` takes
the head as it is).

The plan is only used where its result is the general path's
(:meth:`~nbgateway.proxy.reverse.ReverseProxy._build` followed by
:func:`~nbgateway.dial.http11_wire.request_head`): no header-auth names, no
identity assertion, no trusted proxies, no custom ``Host``; a request whose
own headers the general path would treat specially (``TE``, a name also
set by a custom header, no decoded Host or client address in its context)
makes :meth:`RoutePlan.head` answer None and goes the general way.  The
equivalence is a test (tests/proxy/test_plan.py).

A plan belongs to one ``Route`` and one ``ProxyService`` object: a mapping
update makes new ones, hence a new plan (the proxy's cache checks both by
identity).  Memory is bounded: at most :data:`MAX_TAILS` tails per plan
(cleared when full), and Host values longer than :data:`MAX_HOST_LEN` are
never kept.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http_headers import Headers

from nbgateway.dial.http11_wire import split_url
from nbgateway.proxy.fast_request import FastRequest
from nbgateway.proxy.h2_lean import LeanH2Request
from nbgateway.proxy.headers import (
    FRAMING_LOWER,
    PLAN_SKIPS,
    _without_session_cookie,
    canonical_name,
    connection_named,
    connection_named_of,
    plan_skips,
    prepare_upstream_headers,
)
from nbgateway.routes.paths import PATH_REWRITE_PRESERVE, SESSION_TOKEN_PARAM, outgoing_path
from nbgateway.routes.service import ProxyService, TargetOptions

#: tails kept per plan (cleared when full)
MAX_TAILS = 256
#: a Host value longer than this (client-chosen) is never kept in a plan
MAX_HOST_LEN = 255

_HOST, _COOKIE, _TE, _CONNECTION, _EXPECT, _CONTENT_LENGTH = map(
    canonical_name, ("Host", "Cookie", "TE", "Connection", "Expect", "Content-Length"))
_SESSION_TOKEN_B = SESSION_TOKEN_PARAM.encode("latin-1")
_BODY_METHODS = (b"POST", b"PUT", b"PATCH")


class RoutePlan:
    """See the module docstring.  ``eligible`` is False when the service or
    the proxy needs the general path for every request."""

    __slots__ = ("agent", "cookie", "custom_names", "eligible", "forwarded_proto", "key",
                 "opts", "passthrough", "route", "service", "tails")

    def __init__(self, route: Any, service: ProxyService, opts: TargetOptions,
                 forwarded_proto: str, trusted_proxies: Any) -> None:
        self.route = route
        self.service = service
        self.opts = opts
        self.forwarded_proto = forwarded_proto
        #: (id(identity), client ip, host, secure) -> (identity, the lines
        #: before the cookie, the Host line); (identity, None, None): the
        #: general path
        self.tails: dict[tuple[int, str, str, bool], Any] = {}
        self.custom_names = frozenset(canonical_name(n) for n in opts.custom_headers)
        #: the request's own path and query are the upstream target as they
        #: are (no prefix to strip, none to add, no query of the target's)
        self.passthrough = (route.target_path in ("", "/") and not route.target_query
                            and (route.path in ("", "/")
                                 or opts.path_rewrite == PATH_REWRITE_PRESERVE))
        eligible = (not service.header_auth_names and service.assertion is None
                    and not trusted_proxies and _HOST not in self.custom_names)
        self.key: tuple[bytes, bytes, int] | None = None
        if eligible:
            try:
                self.key = split_url(f"{route.scheme}://{route.netloc}/".encode("latin-1"))[:3]
            except (ValueError, UnicodeEncodeError):
                eligible = False
        self.eligible = eligible
        #: (dialer, timeout, the LeanAgent the proxy's pools gave for them):
        #: the proxy asks the pools again when the dialer or the timeout
        #: differ or the agent's connection pool was retired (None: not yet)
        self.agent: tuple[Any, float, Any] | None = None
        #: (the last one-line Cookie value, it without the session cookie):
        #: a browser sends the same cookies on every request (one pair per
        #: plan; another value is filtered and replaces it)
        self.cookie: tuple[bytes, bytes | None] = (b"", None)

    def head(self, request: Any, ctx: Any, method: bytes, raw_path: bytes, path: str,
             query: bytes, query_s: str | None, body: Any) -> bytes | None:
        """The request line and header block for the upstream, or None: this
        request goes the general way.  ``query_s``: the query decoded (None:
        decoded here if the target needs it as text)."""
        host = ctx.host
        client_ip = ctx.source_ip
        if not host or not client_ip:
            return None
        inbound = request.requestHeaders._rawHeaders
        if _TE in inbound:
            return None
        # the lean requests' own attribute (no method call; a site per type)
        secure = (request.secure if type(request) is FastRequest
                  else request.secure if type(request) is LeanH2Request else request.isSecure())
        tails = self.tails
        identity = ctx.identity
        tail = tails.get((id(identity), client_ip, host, secure))
        if tail is None or tail[0] is not identity:
            tail = self._tail(identity, client_ip, host, secure)
        if tail[1] is None:
            return None  # the general path's head for this Host (a custom Host...)
        # the target: the request's own bytes when the route passes them
        # through unchanged (what outgoing_path returns, without decoding)
        if (self.passthrough and raw_path[1:2] != b"/" and raw_path[:1] == b"/"
                and (not query or query.find(_SESSION_TOKEN_B) < 0)):
            # (find, not "in": a bytes needle in bytes.__contains__ first
            # fails as an int, an exception made and cleared per request)
            target = raw_path + b"?" + query if query else raw_path
        else:
            if query_s is None:
                query_s = query.decode("latin-1")
            target = outgoing_path(self.route, path, query_s,
                                   self.opts.path_rewrite).encode("latin-1")
        connection = inbound.get(_CONNECTION)
        named = None  # the names Connection adds to the dropped ones (falsy: none)
        if connection:  # connection_named(connection), its memo read inline
            named = connection_named_of(connection[0]) if len(connection) == 1 else None
            if named is None:
                named = connection_named(connection)
        custom = self.custom_names
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        # the fast path's head parse made the lines this loop would (see
        # FastRequest.upstream_copy): taken while the headers still have
        # the names they were parsed with and nothing changed a value
        copy = request.upstream_copy if type(request) is FastRequest else None
        if (copy is not None and not named and not custom and copy[1] == len(inbound)
                and not request.requestHeaders.changed):
            parts += copy[0]
        else:
            skip = PLAN_SKIPS
            for name, values in inbound.items():
                verdict = skip.get(name)
                if verdict is None:
                    verdict = plan_skips(name)
                if verdict or (named and name.lower() in named):
                    continue
                if custom and name in custom:
                    return None  # a custom header replaces it in its place
                for value in values:
                    parts += (name, b": ", value, b"\r\n")
        parts.append(tail[1])
        cookie_in = inbound.get(_COOKIE)
        if cookie_in:
            last = self.cookie
            if len(cookie_in) == 1 and cookie_in[0] == last[0]:
                cookie = last[1]  # the same value as the last request's
            else:
                cookie = _without_session_cookie(cookie_in)
                if len(cookie_in) == 1:
                    self.cookie = (cookie_in[0], cookie)
            if cookie:
                parts += (b"Cookie: ", cookie, b"\r\n")
        parts.append(tail[2])
        if body is None:
            if method in _BODY_METHODS:
                parts.append(b"Content-Length: 0\r\n")
        else:
            length = body.length
            if not isinstance(length, int):
                parts.append(b"Transfer-Encoding: chunked\r\n")
            elif length >= 0:
                parts.append(b"Content-Length: %d\r\n" % length)
        parts.append(b"\r\n")
        return b"".join(parts)

    def _tail(self, identity: Any, client_ip: str, host: str, secure: bool) -> Any:
        """The lines after the client's own headers, made by the general
        path on an empty set of inbound headers (kept when the Host is short)."""
        route = self.route
        headers = prepare_upstream_headers(
            Headers(), host_header=host, target_netloc=route.netloc,
            pass_host_header=self.service.pass_host_header,
            custom_headers=self.opts.custom_headers, identity=identity, client_ip=client_ip,
            over_tls=secure, forwarded_proto=self.forwarded_proto)
        items = [(name, values) for name, values in headers._rawHeaders.items()
                 if name not in (_EXPECT, _CONTENT_LENGTH)
                 and name.lower() not in FRAMING_LOWER]
        tail: Any = (identity, None, None)
        if items and items[-1][0] == _HOST and len(items[-1][1]) == 1:
            before = b"".join(name + b": " + value + b"\r\n"
                              for name, values in items[:-1] for value in values)
            tail = (identity, before, _HOST + b": " + items[-1][1][0] + b"\r\n")
        if len(host) <= MAX_HOST_LEN:
            tails = self.tails
            if len(tails) >= MAX_TAILS:
                tails.clear()
            tails[(id(identity), client_ip, host, secure)] = tail
        return tail
