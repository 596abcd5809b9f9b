"""One proxied HTTP/1.1 request: :class:`_Exchange`, the upstream call of a
:class:`~nbgateway.proxy.reverse.ReverseProxy`, from the request head sent
upstream to the last response byte relayed to the client.

It owns, per request:

- the upstream call through the lean pooled client
  (``LeanAgent.request_into``: it reports to the exchange directly, no
  Deferred per request) or any ``IAgent`` (a Deferred);
- bodies streamed both ways with backpressure: the request body through
  :class:`~nbgateway.proxy.streaming.RequestBodyStream`, the response body
  with the upstream transport registered as the producer of the client
  response (chunked on either side as HTTP/1.1 needs);
- the request timeout bounds the dial *and* the whole wait for the response
  head (hardening over upstream, where it only bounds the dial).  One
  deadline per request, re-armed only while a streamed request body is still
  moving upstream, so it bounds the time without progress rather than the
  length of a large upload.  The response body itself is streamed without a
  deadline (SSE-friendly).  The deadlines of all requests share one reactor
  timer (:mod:`nbgateway.dial.deadlines`, the pools' when they have one: the
  upstream idle timeouts are on it too) instead of a ``callLater`` each, and
  that timer lingers when nothing is pending, so a request alone makes no
  timer call either.  The exchange is its own deadline entry
  (``Deadlines.add_owner``): cancelling is ``self.due = None``, no call;
- the response head (status, hop-by-hop filtering, ``rewrite_redirects``;
  an unparseable ``Location`` is a 502) and the body, streamed with the
  exchange itself as the body's protocol; a truncated upstream body aborts
  the client connection (HTTP/1.1) or stream (HTTP/2) so the client sees an
  incomplete response;
- errors: the page for the failure (:mod:`nbgateway.proxy.failures`), and on
  a balanced path passive ejection and the retry of a failed dial on another
  target (:mod:`nbgateway.proxy.balance`);
- the small, already buffered request body form (:class:`_BytesProducer`).

:class:`~nbgateway.proxy.reverse.ReverseProxy` decides where a request goes
and builds it; it makes one :class:`_Exchange` per request.  The log lines
keep the ``nbgateway.proxy.reverse`` namespace they had before this module
was split out of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from twisted.web.http import RESPONSES, PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from nbgateway.dial.http11 import LeanAgent
from nbgateway.dial.http11_conn import _RESPONSE_DONE, LeanResponse
from nbgateway.proxy import pages
from nbgateway.proxy.balance import (
    IDEMPOTENT_METHODS,
    TargetPool,
    TargetState,
    counts_against_target,
    never_reached_upstream,
)
from nbgateway.proxy.failures import classify_error, note_dial_denial, root_cause
from nbgateway.proxy.fast_request import FastRequest
from nbgateway.proxy.h2_lean import LeanH2Request
from nbgateway.proxy.headers import (
    canonical_name,
    filter_response_headers,
    relay_response_headers,
    rewrite_locations,
)
from nbgateway.routes.context import RequestContext
from nbgateway.routes.paths import Route
from nbgateway.routes.service import ProxyService, TargetOptions

if TYPE_CHECKING:
    from nbgateway.proxy.reverse import ReverseProxy

log = Logger(namespace="nbgateway.proxy.reverse")

NO_BODY_CODES = (204, 304)
_RESPONSES = RESPONSES
_LOCATION = canonical_name("Location")


def client_ip(request: Any) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "") or "")

@implementer(IBodyProducer)
class _BytesProducer:
    """A small, already buffered request body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Exchange:
    """One proxied request: the upstream call, its deadline and the response
    relay (the exchange is the response body's ``IProtocol``)."""

    # Slots only (no dict), every one set by the constructor.  In a dict,
    # CPython 3.11 keeps attribute values inline only for the names the
    # class's instances set first (at most 30, one fewer for every instance
    # made while earlier ones still add names): names an exchange sets late
    # or only on some paths (the body's transport, the pending attempt, a
    # balanced path's ``_busy``, a timeout's) moved every exchange that set
    # them, request after request, to a dict of its own once many had been
    # made (see tests/proxy/test_instance_layout.py).
    __slots__ = (
        "_answered", "_busy", "_pending", "_progress_mark", "_sends", "body", "body_transport",
        "client_gone", "context", "done", "due", "head", "key", "method", "opts", "path_query",
        "pool", "proxy", "request", "response_bytes", "route", "service", "state", "timed_out",
        "timeout", "tried",
    )

    def __init__(self, proxy: ReverseProxy, request: Any, ctx: RequestContext,
                 service: ProxyService, route: Route, opts: TargetOptions,
                 pool: TargetPool | None = None, state: TargetState | None = None,
                 path_query: tuple[str, str | bytes] = ("", "")) -> None:
        self.proxy = proxy
        self.request = request
        self.context = ctx
        self.service = service
        self.route = route
        self.opts = opts
        #: load-balanced path: its pool, the target in use, the targets tried
        #: (a list once one is)
        self.pool = pool
        self.state = state
        self.tried: list[str] | tuple[()] = ()
        self.path_query = path_query
        self.client_gone = False
        self.done = False
        self.response_bytes = 0
        self._sends = 0
        self.timed_out = False
        #: the request deadline while it is pending (the deadlines' owner
        #: protocol, see ``Deadlines.add_owner``): None cancels it, no call
        self.due: float | None = None
        self._pending: Any = None  # a Deferred, or the lean client's attempt
        #: the upstream response body's transport (its producer) while the
        #: body is relayed (this exchange is the body's protocol, see
        #: ``makeConnection``)
        self.body_transport: Any = None
        self.timeout = 0.0
        self.body: Any = None
        self._progress_mark = 0
        self._busy = False
        self.method = b""
        self._answered = False
        #: the first attempt's request head made by the route's plan (and its
        #: pool key), sent with the lean client's ``send_head``; None: none
        self.head: bytes | None = None
        self.key: Any = None

    @property
    def host(self) -> str:
        """The request's Host (for redirect rewriting and logs; read when
        needed, not per request)."""
        host = self.request.getHeader(b"host") or ""
        return host.decode("latin-1") if isinstance(host, bytes) else host

    @property
    def path(self) -> str:
        """The logged path: never the query (it may carry session_token)."""
        return self.request.uri.split(b"?", 1)[0].decode("latin-1")

    # -- lifecycle ---------------------------------------------------------
    def start(self, agent: Any, method: bytes, url: bytes | None, headers: Headers | None,
              body: Any, timeout: float) -> None:
        """Send the request (``url`` and ``headers``, or the plan's ``head``
        set beforehand, see :mod:`nbgateway.proxy.plan`) under its deadline."""
        request = self.request
        if type(request) is FastRequest and self.state is None:
            # the HTTP/1.1 fast path, no target to release when it ends: only
            # the client going away first matters (a plain callback: the
            # exchange itself, see __call__; reading self._client_lost would
            # make a bound method through a generic lookup per request);
            # request.on_lost(self), inline
            lost = request.lost_hooks
            if lost:
                lost.append(self)
            else:
                request.lost_hooks = [self]
        elif type(request) is LeanH2Request and self.state is None:
            # the HTTP/2 lean route's: the same, at sites of its own (a site
            # specialises for one type)
            lost = request.lost_hooks
            if lost:
                lost.append(self)
            else:
                request.lost_hooks = [self]
        # the fast path's request has on_lost/on_finish: no getattr() call
        elif not (type(request) is FastRequest
                  or getattr(request, "on_lost", None) is not None):
            finished = request.notifyFinish().addErrback(self._client_lost)
            if self.state is not None:
                finished.addBoth(self._end_attempt)
        elif self.state is not None:
            request.on_finish(self._request_ended)
        else:
            request.on_lost(self)
        self.timeout = timeout
        self.body = body
        self.method = method
        # sets self.due; from the upstream start the proxy has just read off
        # its clock, which is the deadlines' (see ReverseProxy.__init__):
        # not a second clock read
        self.proxy.deadlines.add_owner(timeout, self, self.context.upstream_started)
        head = self.head
        if head is not None and self.state is None and type(agent) is LeanAgent:
            # self._send(agent, url, headers), its path for the plan's head on
            # the lean client without a target pool, inline (one call fewer)
            self._answered = False
            self._sends += 1
            send = self._sends
            self.head = None  # a retry goes the general way
            try:
                attempt = agent.send_head(method, self.key, head, body, self)
            except Exception:
                self.upstream_failed(Failure())
                return
            if not self._answered and self._sends == send:
                self._pending = attempt  # cancel() reaches the attempt
            return
        self._send(agent, url, headers)

    def _request_ended(self, result: Failure | None) -> None:
        """The response ended (None) or the client went away (a Failure)."""
        if result is not None:
            self._client_lost(result)
        if self.state is not None:
            self._end_attempt()

    def _send(self, agent: Any, url: bytes | None, headers: Headers | None) -> None:
        if self.state is not None and self.pool is not None:
            if not self.tried:
                self.tried = []
            self.tried.append(self.state.key)  # type: ignore[union-attr]
            self.pool.started(self.state)
            self._busy = True
        # the gateway's LeanAgent: a type check, not a getattr() call
        if type(agent) is LeanAgent or getattr(agent, "request_into", None) is not None:
            # the lean client reports to this exchange directly: no Deferred
            # and callback chain per request (upstream_response/_failed)
            self._answered = False
            self._sends += 1
            send = self._sends
            head = self.head
            try:
                if head is not None:
                    self.head = None  # a retry on another target goes the general way
                    attempt = agent.send_head(self.method, self.key, head, self.body, self)
                else:
                    attempt = agent.request_into(self.method, url, headers, self.body, self)
            except Exception:
                self.upstream_failed(Failure())
                return
            # unless it was answered already, or failed and was retried on
            # another target (a nested _send holds that attempt)
            if not self._answered and self._sends == send:
                self._pending = attempt  # cancel() reaches the attempt
            return
        try:
            d = agent.request(self.method, url, headers, self.body)
        except Exception:
            d = defer.fail()
        else:
            if not isinstance(d, defer.Deferred):
                d = defer.succeed(d)
        self._pending = d
        d.addCallbacks(self._on_response, self._on_error)
        d.addErrback(self._internal_error)

    def upstream_failed(self, reason: Failure) -> None:
        """The lean client's failure before the response head."""
        self._answered = True
        try:
            self._on_error(reason)
        except Exception:
            self._internal_error(Failure())

    def _end_attempt(self, _: Any = None) -> None:
        """The target in use is no longer busy with this request."""
        if self._busy and self.state is not None and self.pool is not None:
            self._busy = False
            self.pool.ended(self.state)

    def __call__(self, reason: Failure) -> None:
        """The fast path's ``on_lost`` observer: the client went away."""
        self._client_lost(reason)

    def _client_lost(self, _reason: Failure) -> None:
        self.client_gone = True
        self._cancel_deadline()
        if self._pending is not None:  # cancel() also reaches a chained Deferred
            self._pending.cancel()
        if self.body_transport is not None:
            # stop reading the upstream body; its connection is dropped
            self.body_transport.stopProducing()

    def deadline_expired(self) -> None:
        """The request deadline (``self.due``, None by now) has passed."""
        sent = getattr(self.body, "sent", 0)
        if sent != self._progress_mark:
            # The request body is still moving: the deadline bounds the
            # wait without progress, not the duration of a large upload.
            self._progress_mark = sent
            self.proxy.deadlines.add_owner(self.timeout, self)
            return
        self.timed_out = True
        if self._pending is not None:  # cancel() also reaches a chained Deferred
            self._pending.cancel()

    def _cancel_deadline(self) -> None:
        self.due = None  # the deadlines drop the entry lazily
        deadlines = self.proxy.deadlines
        if not deadlines.linger:  # shutting down: no timer left behind
            deadlines.disarm_idle()

    def finish(self) -> None:
        if self.done or self.client_gone:
            return
        self.done = True
        self.request.finish()

    # -- response ----------------------------------------------------------
    def _on_response(self, response: Any) -> None:
        """The response head: the lean client's (``upstream_response``, see
        ``LeanAgent.request_into``) or the Deferred's."""
        self._answered = True
        self._pending = None
        self.due = None  # _cancel_deadline, inline
        try:
            if self.state is not None and self.pool is not None:
                self.pool.succeeded(self.state)
            if self.client_gone:
                response.deliverBody(_Discard())
                return
            request = self.request
            # the lean client's head: the response's own dict (its Headers
            # object is made only if read); any other response's Headers
            lean = type(response) is LeanResponse
            headers = response if lean else response.headers
            if self.service.rewrite_redirects and _LOCATION in headers._rawHeaders:
                headers = filter_response_headers(response.headers)
                try:
                    rewrite_locations(headers, self.route, self.host, request.isSecure(),
                                      self.proxy.forwarded_proto, self.opts.path_rewrite)
                except ValueError as exc:
                    response.deliverBody(_Discard())
                    self._send_error(pages.CONNECTION_ERROR, exc)
                    return
            code = response.code
            if type(request) is FastRequest:  # noqa: SIM114 (request.setResponseCode(...), inline)
                request.code = code
                phrase = response.phrase
                request.code_message = phrase if phrase else _RESPONSES.get(
                    code, b"Unknown Status")
            elif type(request) is LeanH2Request:  # the same, at sites of its own
                request.code = code
                phrase = response.phrase
                request.code_message = phrase if phrase else _RESPONSES.get(
                    code, b"Unknown Status")
            else:
                request.setResponseCode(code, response.phrase or None)
            request.defaultContentType = None
            length = response.length
            # one pass into the client response's headers (no intermediate
            # copy); the lean client's are made for this response and read by
            # nothing after: their value lists are moved, not copied
            relay_response_headers(
                request.responseHeaders, headers,
                length if (isinstance(length, int) and request.method != b"HEAD"
                           and code not in NO_BODY_CODES) else None,
                lean)
            request.upstream_status = code
            if lean:
                response._conn.deliver(self)  # its deliverBody, without the call
            else:
                response.deliverBody(self)
        except Exception:
            self._internal_error(Failure())

    # -- the response body: this exchange is its protocol ---------------------
    # It streams the upstream response body into the client response, with
    # the upstream transport registered as the (streaming) producer.

    def makeConnection(self, transport: Any) -> None:
        self.body_transport = transport
        if self.client_gone:
            transport.stopProducing()
            return
        request = self.request
        if type(request) is FastRequest and not request.producer:
            # FastRequest.registerProducer(transport, True), inline (one call
            # fewer per response; tests/proxy/test_producer_inline.py)
            request.producer = transport
            channel = request.channel
            if channel is not None:
                if channel._requestProducer is None:
                    channel._requestProducer = transport
                    channel._requestProducerStreaming = True
                else:
                    channel.registerProducer(transport, True)
        else:
            request.registerProducer(transport, True)

    def dataReceived(self, data: bytes) -> None:
        if self.client_gone:
            return
        self.response_bytes += len(data)
        self.request.write(data)

    def connectionLost(self, reason: Failure) -> None:
        # the body is over: the exchange no longer reaches the upstream
        # transport (nor, through it, the upstream connection)
        self.body_transport = None
        if self.client_gone:
            return
        request = self.request
        if type(request) is FastRequest:
            # FastRequest.unregisterProducer(), inline
            channel = request.channel
            if channel is not None:
                if channel._requestProducerStreaming:
                    channel._requestProducer = None
                    channel._requestProducerStreaming = None
                else:
                    channel.unregisterProducer()
            request.producer = None
        else:
            request.unregisterProducer()
        # the lean client's shared end first: an identity test (reading a
        # Failure's value is a generic lookup, a BaseException's dict)
        if (reason is _RESPONSE_DONE or type(reason.value) is ResponseDone
                or reason.check(ResponseDone, PotentialDataLoss)):
            if not self.done:  # self.finish(), inline (the client is here)
                self.done = True
                request.finish()
            return
        # Truncated upstream body: the client must see an incomplete
        # response, not a well-formed short one.
        log.warn("upstream response body failed: {error}", error=str(reason.value),
                 host=self.host, path=self.path)
        channel = request.channel
        # HTTP/1.1: the connection; HTTP/2: the stream (RST_STREAM)
        transport = channel.transport if channel is not None else None
        if transport is None and channel is not None and hasattr(channel, "abortConnection"):
            transport = channel
        if transport is not None:
            transport.abortConnection()

    upstream_response = _on_response

    # -- errors ------------------------------------------------------------
    def _on_error(self, failure: Failure) -> None:
        self._pending = None
        if self.client_gone:
            self._cancel_deadline()
            return
        exc = root_cause(failure)
        if self.state is not None and self.pool is not None:
            if counts_against_target(exc, self.timed_out):
                now = self.proxy.clock.seconds()
                if self.pool.failed(self.state, now):
                    log.warn("upstream target ejected: {target}", target=self.state.route.origin,
                             domain=self.service.domain, path=self.route.path,
                             error=repr(exc))
            if self._retry(exc):
                return
        self._cancel_deadline()
        self._send_error(classify_error(exc, self.timed_out), exc)

    def _retry(self, exc: BaseException) -> bool:
        """Send the request to another target of the path if it never reached
        an upstream (failed dial), is idempotent and its body is untouched."""
        pool = self.pool
        if (pool is None or self.timed_out or self.method not in IDEMPOTENT_METHODS
                or not never_reached_upstream(exc) or not _body_untouched(self.body)):
            return False
        nxt = pool.pick(self.proxy.clock.seconds(), exclude=self.tried)
        if nxt is None:
            return False
        path, query = self.path_query  # the query as the proxy got it: bytes or text
        prepared = self.proxy.prepare(self.request, self.context, self.service, nxt.route, path,
                                      query.decode("latin-1") if isinstance(query, bytes)
                                      else query)
        if not isinstance(prepared, tuple):
            return False
        agent, url, headers, opts, _timeout = prepared
        self._end_attempt()
        log.info("retrying {method} on another target: {target}",
                 method=self.method.decode("latin-1"), target=nxt.route.origin,
                 failed=repr(exc), domain=self.service.domain)
        self.state = nxt
        self.route = nxt.route
        self.opts = opts
        self.context.route = nxt.route
        self.context.target = nxt.route.origin
        self._send(agent, url, headers)
        return True

    def _send_error(self, page: pages.ErrorPage, exc: Any) -> None:
        log.warn(
            "proxy error {status} {title}: {error}", status=page.code, title=page.title,
            error=repr(exc), client_ip=client_ip(self.request),
            method=self.request.method.decode("latin-1"), host=self.host, path=self.path,
            target=self.route.target,
        )
        self.request.proxy_error = page.title
        self._end_attempt()
        note_dial_denial(self.context, exc, self.proxy, self.service)
        self.done = True
        pages.send_page(self.request, page, destination=self.route.target)

    def _internal_error(self, failure: Failure) -> None:
        log.failure("reverse proxy internal error", failure=failure)
        if not self.done and not self.client_gone and not self.request.startedWriting:
            self.done = True
            pages.send_page(self.request, pages.CONNECTION_ERROR)


class _Discard(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()

    def connectionLost(self, reason: Failure) -> None:
        pass

def _body_untouched(body: Any) -> bool:
    """Can the request body still be sent to another target?"""
    if body is None or isinstance(body, _BytesProducer):
        return True
    return getattr(body, "sent", 1) == 0 and getattr(body, "_consumer", None) is None
