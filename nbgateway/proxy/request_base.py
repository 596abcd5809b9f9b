"""What the lean requests of both routes share: :class:`LeanRequest`.

The HTTP/1.1 fast path's :class:`~nbgateway.proxy.fast_request.FastRequest`
and the HTTP/2 lean route's :class:`~nbgateway.proxy.h2_lean.LeanH2Request`
are the part of ``twisted.web.server.Request`` the gateway's resource,
proxy, error pages and access log use.  This module holds what they have in
common: the request's fields (method, target, headers, the connection's
addresses), the response status and headers with twisted.web's defaults
(``Server``, a ``Date`` formatted once per second by :func:`http_date`), the
finish observers (``on_finish``, ``on_lost``, ``notifyFinish``) and
twisted.web's 500 page.  Each route's class adds how the response is written
(HTTP/1.1 framing on the connection, or frames on the HTTP/2 stream), how a
header is looked up and how the connection is aborted.

It imports neither the request body stream (:mod:`nbgateway.proxy.streaming`)
nor the HTTP/2 connection: both routes' modules import it.
"""

from __future__ import annotations

import time
import types
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers

from nbgateway.proxy.headers import canonical_name

_SERVER = server.version
_new_headers = Headers.__new__
_RESPONSES = http.RESPONSES
PROCESSING_FAILED = (b"<html><head><title>Processing Failed</title></head><body>"
                     b"<b>Processing Failed</b></body></html>")
_CONNECTION, _SERVER_NAME, _DATE = map(canonical_name, ("Connection", "Server", "Date"))
#: [second, ``Date`` value]
_date_cache: list[Any] = [0, b""]


def http_date() -> bytes:
    """``Date`` as twisted.web formats it, formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = http.datetimeToString(now)
    return _date_cache[1]


class LeanRequest:
    """The fields and methods both lean requests share (see the module
    docstring).  A subclass defines ``write``, ``finish``, ``getHeader``,
    ``_abort(channel)`` (the connection or stream
    reset once a response has started) and ``_log_failure`` (its logger's
    ``failure``, the log lines keeping the route's namespace) and
    ``_route`` (the log lines' prefix)."""

    #: ``Logger.failure`` of the subclass's logger (a staticmethod)
    _log_failure: Any
    #: the log lines' prefix: which route
    _route = "lean route"

    # Slots only (fixed offsets, no per-instance dict): see FastRequest.
    # The HTTP/1.1 framing's (``chunked``, ``_held``) are here too: one
    # ``__init__`` (one frame) per request on either route.
    __slots__ = (
        "_bodiless", "_disconnected", "_held", "body_stream", "channel", "channel_host",
        "channel_peer", "chunked", "code", "code_message", "content", "defaultContentType",
        "finish_hooks", "finished", "lost_hooks", "method", "notifications", "path", "peer_ip",
        "producer", "proxy_error", "requestHeaders", "responseHeaders", "routed", "secure",
        "sentLength", "startedWriting", "transport", "underscore_names", "upstream_copy",
        "upstream_status", "uri",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each subclass gets its own copy of the base's methods (the same
        source, a code object of its own): CPython 3.11 specialises an
        attribute read or write for one exact type per bytecode site, so
        one ``__init__`` shared by the HTTP/1.1 and the HTTP/2 request
        would fall back to the generic lookup for whichever route is not
        the one it was specialised for, on a gateway serving both (measured:
        +5.2k instructions per request made, alternating the two)."""
        super().__init_subclass__(**kwargs)
        for name, fn in vars(LeanRequest).items():
            if not isinstance(fn, types.FunctionType) or name in vars(cls):
                continue
            copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                                      fn.__defaults__, fn.__closure__)
            copy.__kwdefaults__ = fn.__kwdefaults__
            copy.__doc__ = fn.__doc__
            copy.__qualname__ = f"{cls.__qualname__}.{name}"
            copy.__annotations__ = fn.__annotations__
            setattr(cls, name, copy)

    def __init__(self, channel: Any, method: bytes, uri: bytes, headers: Headers,
                 close: bool, underscore: bool = True, info: tuple[Any, ...] | None = None,
                 routed: Any = None) -> None:
        self.channel = channel
        #: the connection's transport (HTTP/1.1); None on an HTTP/2 stream,
        #: as on twisted.web's request of one
        self.transport = channel.transport
        self.method = method
        self.uri = uri
        self.path = uri.split(b"?", 1)[0]
        self.requestHeaders = headers
        # ``info``: the connection's tuple (made once per connection): the
        # client's address, its host as text (what the front resource logs),
        # the local address, TLS or not, ...
        if info is not None:
            self.channel_peer, self.peer_ip, self.channel_host, self.secure, _, _ = info
        else:
            self.channel_peer = self.channel_host = self.peer_ip = None
            self.secure = False
        #: any request header name with "_" (the front door drops those; True: unknown)
        self.underscore_names = underscore
        #: the resource's ``fast_route`` answer for the request's host: the
        #: HTTP/2 lean route's, or the fast path's when the request is
        #: dispatched in the turn that routed it (None: route it again)
        self.routed = routed
        #: (the HTTP/1.1 head parse's upstream lines of the headers a route
        #: plan copies as they are, how many names the headers had): the plan
        #: takes the lines instead of walking the headers while they still
        #: have that many names and no change was made through their methods
        #: (``fast_request.ParsedHeaders``); None: the plan walks them
        self.upstream_copy: tuple[list[bytes], int] | None = None
        self.code = 200
        self.code_message = b"OK"
        self.defaultContentType: bytes | None = b"text/html"
        self.upstream_status: int | None = None
        self.proxy_error: str | None = None
        # the defaults twisted.web sets, in its order
        raw = {_CONNECTION: [b"close"]} if close else {}
        raw[_SERVER_NAME] = [_SERVER]
        date = _date_cache  # http_date(), its cached value read inline
        raw[_DATE] = [date[1] if date[0] == int(time.time()) else http_date()]
        out = _new_headers(Headers)  # headers_from_raw(raw), inline
        out._rawHeaders = raw
        self.responseHeaders = out
        self.finished = False
        self._disconnected = False
        self.startedWriting = False
        #: a HEAD (or 204/304) response's head is out: later writes are dropped
        self._bodiless = False
        self.sentLength = 0
        #: HTTP/1.1 framing: a chunked response, its bytes held to the end of
        #: the upstream's read (or the response's end): see FastRequest._send
        self.chunked = False
        self._held: list[bytes] | None = None
        #: the request body's stream (HTTP/1.1 with a body; None: none),
        #: the buffered body (None: none)
        self.body_stream: Any = None
        self.content: Any = None
        self.producer: Any = None
        #: ``on_finish`` observers (the list is made on first use)
        self.finish_hooks: list[Any] | tuple[()] = ()
        #: ``on_lost`` observers (the list is made on first use)
        self.lost_hooks: list[Any] | tuple[()] = ()
        #: notifyFinish's Deferreds (the list is made on first use)
        self.notifications: list[defer.Deferred[None]] | tuple[()] = ()

    # -- what resources read -------------------------------------------------
    def getClientAddress(self) -> Any:
        return self.channel_peer

    def getHost(self) -> Any:
        return self.channel_host

    def isSecure(self) -> bool:
        return self.secure

    def getCookie(self, key: bytes) -> bytes | None:  # login flows take twisted.web's route
        return None

    def on_finish(self, fn: Any) -> None:
        """``fn(None)`` when the response ends, ``fn(failure)`` when the client
        is gone first: ``notifyFinish`` without a Deferred per observer."""
        if not self.finish_hooks:
            self.finish_hooks = []
        self.finish_hooks.append(fn)  # type: ignore[union-attr]

    def on_lost(self, fn: Any) -> None:
        """``fn(failure)`` when the client is gone before the response ended
        (after the ``on_finish`` observers); never called otherwise."""
        if not self.lost_hooks:
            self.lost_hooks = []
        self.lost_hooks.append(fn)  # type: ignore[union-attr]

    def notifyFinish(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if not self.notifications:
            self.notifications = []
        self.notifications.append(d)  # type: ignore[union-attr]
        return d

    # -- the response --------------------------------------------------------
    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.code_message = message if message is not None else _RESPONSES.get(
            code, b"Unknown Status")

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """The producer registered with the channel (the HTTP/1.1 fast path
        inlines its channel's registration)."""
        if self.producer:
            raise ValueError("a producer is already registered")
        self.producer = producer
        channel = self.channel
        if channel is not None:
            channel.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        channel = self.channel
        if channel is not None:
            channel.unregisterProducer()
        self.producer = None

    def _ended(self) -> None:
        """The response ended (``finish``): the finish observers with None,
        the ``notifyFinish`` Deferreds' callbacks; the lost ones dropped."""
        if self.lost_hooks:
            self.lost_hooks = ()
        hooks = self.finish_hooks
        if hooks:
            self.finish_hooks = ()
        for fn in hooks:
            try:
                fn(None)
            except Exception:
                self._log_failure("{route}: a finish observer failed", route=self._route)
        notifications, self.notifications = self.notifications, ()
        for d in notifications:
            d.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        """The client is gone (connection lost, stream reset)."""
        self._disconnected = True
        self.channel = None
        self._lost(reason)

    def _lost(self, reason: Failure) -> None:
        """The client went away first: the finish observers, then the lost
        ones, with ``reason``; the ``notifyFinish`` Deferreds' errbacks."""
        hooks, self.finish_hooks = self.finish_hooks, ()
        for fn in hooks:
            try:
                fn(reason)
            except Exception:
                self._log_failure("{route}: a finish observer failed", route=self._route)
        lost, self.lost_hooks = self.lost_hooks, ()
        for fn in lost:
            try:
                fn(reason)
            except Exception:
                self._log_failure("{route}: a lost-connection observer failed",
                                  route=self._route)
        notifications, self.notifications = self.notifications, ()
        for d in notifications:
            d.errback(reason)

    def _abort(self, channel: Any) -> None:
        raise NotImplementedError

    def processing_failed(self, reason: Failure) -> None:
        """An exception out of the resource: twisted.web's 500 page, or the
        connection (stream) reset once the response has started."""
        self._log_failure("{route}: processing failed", failure=reason, route=self._route)
        if self.finished or self._disconnected or self.startedWriting:
            channel = self.channel
            if not self._disconnected and channel is not None:
                self._abort(channel)
            return
        self.setResponseCode(500)
        self.setHeader(b"content-type", b"text/html")
        self.setHeader(b"content-length", b"%d" % len(PROCESSING_FAILED))
        self.write(PROCESSING_FAILED)  # type: ignore[attr-defined]
        self.finish()  # type: ignore[attr-defined]
