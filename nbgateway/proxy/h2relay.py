"""Relaying a request to an HTTP/2 upstream (``upstream_protocol: h2``; gRPC).

:class:`H2Relay` is what :class:`~nbgateway.proxy.reverse.ReverseProxy`
uses for a route whose target options say ``h2``.  The request head is the
one the HTTP/1.1 path sends (:meth:`ReverseProxy.upstream_headers`: identity
stamped, spoofed identity and hop-by-hop headers removed), as HTTP/2
pseudo-headers (``Host`` becomes ``:authority``) plus ``te: trailers`` when
the client asked for trailers (gRPC requires it).  It goes to a pooled
connection of :class:`nbgateway.dial.h2.H2Pools` (h2c prior knowledge for
``http://`` targets, ALPN ``h2`` for ``https://``), dialed through the
account's dialer, so the direct-upstream guard applies.

Streaming both ways, nothing buffered whole: the request body is produced
into the upstream stream as the windows allow (the client is paused through
:class:`~nbgateway.proxy.streaming.RequestBodyStream` backpressure), and
each response DATA frame is written to the client as it arrives (server
streaming), with the upstream's receive window held while the client
response is paused.  The response trailers are sent on the client's HTTP/2
stream (:mod:`nbgateway.proxy.h2trailers`).  A gRPC "trailers-only" upstream
answer (a ``HEADERS`` frame with ``END_STREAM`` carrying ``grpc-status``) is
relayed as response headers (``:status`` and ``content-type``) followed by
the metadata as trailers, which gRPC clients read the same way.

The request timeout bounds the dial and the wait for the response head (as
on the HTTP/1.1 path, re-armed while the request body moves); the response
body has no deadline.  A client that goes away cancels the upstream stream
(``RST_STREAM(CANCEL)``); an upstream reset after the head aborts the
client's stream, so the client never sees a well-formed truncated response.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from nbgateway.dial import DirectUpstreamDeniedError, ProxyNotConnectedError
from nbgateway.dial.h2 import H2Pools, H2Stream
from nbgateway.proxy import pages
from nbgateway.proxy.failures import classify_error, note_dial_denial, root_cause
from nbgateway.proxy.h2trailers import set_trailers
from nbgateway.proxy.headers import filter_response_headers, rewrite_locations
from nbgateway.routes.context import RequestContext
from nbgateway.routes.paths import Route
from nbgateway.routes.service import ProxyService, TargetOptions

log = Logger()

#: request headers HTTP/2 forbids (RFC 9113 8.2.2); ``te`` is re-added as
#: ``trailers`` when the client sent that
_CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                  b"transfer-encoding", b"upgrade", b"te", b"host"))
#: what stays on the response head of a relayed trailers-only answer
_HEAD_ONLY = frozenset((b"content-type", b"date"))


def h2_request_headers(method: bytes, scheme: str, path: str, headers: Headers,
                       wants_trailers: bool) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header block for the upstream request (pseudo-headers
    first, lower-case names, connection-specific headers dropped)."""
    authority = (headers.getRawHeaders(b"host") or [b""])[0]
    out = [(b":method", method), (b":scheme", scheme.encode("ascii")),
           (b":authority", authority), (b":path", path.encode("latin-1"))]
    for name, values in headers.getAllRawHeaders():
        lname = name.lower()
        if lname in _CONNECTION_SPECIFIC:
            continue
        out.extend((lname, v) for v in values)
    if wants_trailers:
        out.append((b"te", b"trailers"))
    return out


def counts_against_target(exc: BaseException, timed_out: bool) -> bool:
    """Is a failure before the response head the target's (passive health)?
    Transport failures and timeouts are; the gateway's own refusals (dial
    guard, no tunnel), a cancellation and a configuration error are not (the
    rule of the HTTP/1.1 path, :func:`nbgateway.proxy.reverse.counts_against_target`)."""
    if timed_out:
        return True
    return not isinstance(exc, DirectUpstreamDeniedError | ProxyNotConnectedError
                          | defer.CancelledError | ValueError)


def _wants_trailers(request: Any) -> bool:
    for value in request.requestHeaders.getRawHeaders(b"te") or []:
        if b"trailers" in (t.strip().split(b";")[0].lower() for t in value.split(b",")):
            return True
    ctype = (request.requestHeaders.getRawHeaders(b"content-type") or [b""])[0]
    return ctype.lower().startswith(b"application/grpc")


class _H2Exchange:
    """One request relayed to an HTTP/2 upstream."""

    def __init__(self, proxy: Any, request: Any, ctx: RequestContext, service: ProxyService,
                 route: Route, opts: TargetOptions, timeout: float,
                 pool: Any = None, state: Any = None) -> None:
        self.proxy = proxy
        #: a load-balanced path: its target pool and the target used (passive health)
        self.pool = pool
        self.state = state
        self.request = request
        self.context = ctx
        self.service = service
        self.route = route
        self.opts = opts
        self.timeout = timeout
        host = request.getHeader(b"host") or b""
        self.host = host.decode("latin-1") if isinstance(host, bytes) else host
        self.path = request.uri.split(b"?", 1)[0].decode("latin-1")
        self.stream: H2Stream | None = None
        self.client_gone = False
        self.timed_out = False
        self.done = False
        self.got_trailers: list[tuple[bytes, bytes]] = []
        self._pending: defer.Deferred[Any] | None = None
        self._deadline: Any = None
        self._progress_mark = 0
        self._producing = False
        self.upstream_names: set[bytes] = set()

    # -- lifecycle ---------------------------------------------------------
    def start(self, pools: H2Pools, dialer: Any, headers: list[tuple[bytes, bytes]],
              body: Any) -> None:
        self.request.notifyFinish().addErrback(self._client_lost)
        if self.pool is not None and self.state is not None:
            self.pool.started(self.state)
            self.request.notifyFinish().addBoth(lambda _: self.pool.ended(self.state))
        self._deadline = self.proxy.clock.callLater(self.timeout, self._on_timeout)
        route = self.route
        d = self._pending = pools.connection(
            self.service.account_id, dialer, direct=self.opts.direct_upstream,
            skip_verify=self.opts.skip_tls_verify, tls=route.scheme == "https",
            host=route.host, port=route.port, timeout=self.timeout)
        d.addCallback(self._open, headers, body)
        d.addCallbacks(self._on_response, self._on_error)
        d.addErrback(self._internal_error)

    def _open(self, conn: Any, headers: list[tuple[bytes, bytes]], body: Any) -> Any:
        if self.client_gone or self.timed_out:
            raise defer.CancelledError()
        self.stream = conn.request(headers, body)
        return self.stream.response

    def _client_lost(self, _reason: Failure) -> None:
        self.client_gone = True
        self._cancel_deadline()
        if self._pending is not None:
            self._pending.cancel()
        if self.stream is not None:
            self.stream.cancel()  # RST_STREAM(CANCEL) upstream

    def _on_timeout(self) -> None:
        self._deadline = None
        sent = self.stream.sent if self.stream is not None else 0
        if sent != self._progress_mark:
            self._progress_mark = sent
            self._deadline = self.proxy.clock.callLater(self.timeout, self._on_timeout)
            return
        self.timed_out = True
        if self._pending is not None:
            self._pending.cancel()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    # -- response head -------------------------------------------------------
    def _on_response(self, head: tuple[int, list[tuple[bytes, bytes]]]) -> None:
        self._pending = None
        self._cancel_deadline()
        if self.pool is not None and self.state is not None:
            self.pool.succeeded(self.state)
        stream = self.stream
        assert stream is not None
        if self.client_gone:
            stream.cancel()
            return
        status, raw = head
        upstream = Headers()
        for name, value in raw:
            upstream.addRawHeader(name, value)
        headers = filter_response_headers(upstream)
        request = self.request
        if self.service.rewrite_redirects:
            try:
                rewrite_locations(headers, self.route, self.host, request.isSecure(),
                                  self.proxy.forwarded_proto, self.opts.path_rewrite)
            except ValueError as exc:
                stream.cancel()
                self._send_error(pages.CONNECTION_ERROR, exc)
                return
        request.setResponseCode(status)
        request.defaultContentType = None
        request.responseHeaders.removeHeader(b"server")
        self.upstream_names = set()
        for name, values in headers.getAllRawHeaders():
            request.responseHeaders.setRawHeaders(name, values)
            self.upstream_names.add(name.lower())
        request.upstream_status = status
        self._producing = True
        request.registerProducer(self, True)
        stream.read(self)

    # -- IPushProducer (the client response pulls through this) ------------
    def pauseProducing(self) -> None:
        if self.stream is not None:
            self.stream.pause()

    def resumeProducing(self) -> None:
        if self.stream is not None:
            self.stream.resume()

    def stopProducing(self) -> None:
        if self.stream is not None:
            self.stream.cancel()

    # -- the stream's sink -----------------------------------------------------
    def data(self, data: bytes) -> None:
        if not self.client_gone and not self.done:
            self.request.write(data)

    def trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.got_trailers = list(trailers)

    def ended(self) -> None:
        if self.client_gone or self.done:
            return
        request = self.request
        self._unregister()
        trailers = self.got_trailers
        if not trailers and not request.startedWriting:
            trailers = self._trailers_only()
        if trailers and not set_trailers(request, trailers):
            log.debug("response trailers dropped (client is not on HTTP/2)",
                      host=self.host, path=self.path)
        self.done = True
        request.finish()

    def _trailers_only(self) -> list[tuple[bytes, bytes]]:
        """A gRPC trailers-only answer: the upstream's metadata moves to
        trailers (only when the client is on an HTTP/2 stream that can carry
        them); what the gateway adds (a session cookie) stays in the head."""
        request = self.request
        if not request.responseHeaders.hasHeader(b"grpc-status"):
            return []
        if not set_trailers(request, []):
            return []
        moved = []
        for name, values in list(request.responseHeaders.getAllRawHeaders()):
            lname = name.lower()
            if lname in _HEAD_ONLY or lname not in self.upstream_names:
                continue
            moved.extend((lname, v) for v in values)
            request.responseHeaders.removeHeader(name)
        return moved

    def failed(self, reason: Failure) -> None:
        if self.client_gone or self.done:
            return
        self._unregister()
        self.done = True
        log.warn("upstream HTTP/2 response failed: {error}", error=str(reason.value),
                 host=self.host, path=self.path)
        channel = self.request.channel
        if channel is not None and hasattr(channel, "abortConnection"):
            channel.abortConnection()  # HTTP/2: RST_STREAM; HTTP/1.1: the connection
        elif channel is not None and channel.transport is not None:
            channel.transport.abortConnection()

    def _unregister(self) -> None:
        if self._producing:
            self._producing = False
            self.request.unregisterProducer()

    # -- errors --------------------------------------------------------------
    def _on_error(self, failure: Failure) -> None:
        self._pending = None
        self._cancel_deadline()
        if self.client_gone:
            return
        exc = root_cause(failure)
        if (self.pool is not None and self.state is not None
                and counts_against_target(exc, self.timed_out)):
            self.pool.failed(self.state, self.proxy.clock.seconds())
        self._send_error(classify_error(exc, self.timed_out), exc)

    def _send_error(self, page: pages.ErrorPage, exc: Any) -> None:
        log.warn("proxy error {status} {title}: {error}", status=page.code, title=page.title,
                 error=repr(exc), method=self.request.method.decode("latin-1"),
                 host=self.host, path=self.path, target=self.route.target)
        self.request.proxy_error = page.title
        note_dial_denial(self.context, exc, self.proxy, self.service)
        self.done = True
        pages.send_page(self.request, page, destination=self.route.target)

    def _internal_error(self, failure: Failure) -> None:
        log.failure("HTTP/2 relay internal error", failure=failure)
        if not self.done and not self.client_gone and not self.request.startedWriting:
            self.done = True
            pages.send_page(self.request, pages.CONNECTION_ERROR)


class H2RelayMetrics:
    """Prometheus collector of the HTTP/2 upstream pools of ``proxy.h2``
    (zeros until the first ``h2`` target is used)."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy

    def collect(self) -> Any:
        """A prometheus_client custom-collector ``collect``."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        relay = self.proxy.h2
        pools = relay.pools if relay is not None else None

        def value(fn: Any) -> float:
            return float(fn()) if pools is not None else 0.0

        conns = GaugeMetricFamily("nbgateway_upstream_h2_connections",
                                  "Open HTTP/2 connections to upstreams (gRPC targets)")
        conns.add_metric([], value(lambda: pools.open_connections()))
        yield conns
        streams = GaugeMetricFamily("nbgateway_upstream_h2_streams",
                                    "Requests in flight on HTTP/2 upstream connections")
        streams.add_metric([], value(lambda: pools.active_streams()))
        yield streams
        waiting = GaugeMetricFamily("nbgateway_upstream_h2_waiting",
                                    "Requests waiting for an HTTP/2 upstream connection or "
                                    "a free stream")
        waiting.add_metric([], value(lambda: pools.waiting()))
        yield waiting
        dials = CounterMetricFamily("nbgateway_upstream_h2_dials",
                                    "HTTP/2 upstream connections dialed, by result",
                                    labels=["result"])
        failures = value(lambda: pools.dial_failures)
        dials.add_metric(["ok"], value(lambda: pools.dials) - failures)
        dials.add_metric(["failed"], failures)
        yield dials

    def describe(self) -> list[Any]:
        return []


class H2Relay:
    """Relays requests for ``h2`` targets; owns the HTTP/2 pools.

    ``pools``: an :class:`H2Pools` (default: one on the proxy's reactor and
    clock with the HTTP/1.1 pools' client TLS policy)."""

    def __init__(self, proxy: Any, pools: H2Pools | None = None) -> None:
        self.proxy = proxy
        if pools is None:
            pools = H2Pools(proxy.reactor, clock=proxy.clock,
                            tls_creator=getattr(proxy.pools, "tls_creator", None))
        self.pools = pools

    def relay(self, request: Any, ctx: RequestContext, service: ProxyService, route: Route,
              opts: TargetOptions, dialer: Any, target_path: str, timeout: float,
              headers: Headers, body: Any, pool: Any = None, state: Any = None) -> None:
        """``pool``/``state``: the path's target pool and the picked target
        when the path is load-balanced (no retry on another target: a gRPC
        call is a POST)."""
        block = h2_request_headers(request.method, route.scheme, target_path, headers,
                                   _wants_trailers(request))
        exchange = _H2Exchange(self.proxy, request, ctx, service, route, opts, timeout,
                               pool, state)
        exchange.start(self.pools, dialer, block, body)

    def close_account(self, account_id: str) -> None:
        self.pools.close_account(account_id)

    def close(self) -> None:
        self.pools.close()
