"""The HTTP/1.1 fast path of the gateway's listeners.

:class:`FastHTTPChannel` is a :class:`~nbgateway.proxy.streaming.StreamingHTTPChannel`
that serves the common request itself instead of through twisted.web's
line-by-line ``HTTPChannel`` parser and ``server.Request``:

- the request head is found with one ``find(b"\\r\\n\\r\\n")`` and parsed by
  ``httptools`` (llhttp, strict) in one call;
- a :class:`FastRequest` (the subset of ``twisted.web.server.Request`` the
  gateway's resource, reverse proxy, error pages and access log use) is given
  to the site's resource directly: no resource traversal, no
  ``Request.process``; the status line, headers and first body bytes go out
  in one transport write, with the same default headers (``Server``, a
  ``Date`` formatted once per second), the same chunked framing and the same
  persistence rules as twisted.web; a chunked response relayed from the lean
  upstream client leaves in one write per upstream read, the terminator
  with the last chunk when the message ends in that read;
- bodies: ``Content-Length`` bodies up to
  :data:`~nbgateway.proxy.streaming.STREAM_THRESHOLD` are buffered and
  dispatched complete (as twisted.web does), larger ones are streamed through
  a :class:`~nbgateway.proxy.streaming.RequestBodyStream` with backpressure;
- pipelined requests are served one at a time, in order; reading pauses when
  more than :data:`MAX_PIPELINED` bytes wait behind the current request;
- the read-header deadline and the idle timeout are the channel's (no timer
  per request: the idle timer is reset, never re-created, while a request is
  in flight).

Anything else is handed to the unchanged twisted.web path of the same
channel at a request boundary, replaying the bytes the fast path buffered:
a resource that does not offer ``fast_route(host)`` (and name this class as
its ``fast_protocol``) or declines the host
(operator login flows), HTTP/1.0, ``Upgrade``/``CONNECT``, ``Expect``,
``Transfer-Encoding`` bodies, a target not in origin form, a head llhttp
rejects or larger than :data:`MAX_FAST_HEAD`, HTTP/2 after ALPN.  Once
handed over, the connection stays on the twisted.web path.  ``ProxySite(...,
fast=False)`` (or ``NBGW_HTTP_FAST=0`` in the environment) disables the fast
path for A/B comparisons.
"""

from __future__ import annotations

import time
from io import BytesIO
from typing import Any

import httptools
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers

from nbgateway.proxy.headers import canonical_name, headers_from_raw
from nbgateway.proxy.streaming import (
    H2C_PREFACE,
    STREAM_THRESHOLD,
    RequestBodyStream,
    StreamingHTTPChannel,
)

log = Logger()

#: a head larger than this goes to twisted.web (which enforces its own limits)
MAX_FAST_HEAD = 8 * 1024
#: a fast request with more header lines goes to twisted.web
MAX_FAST_HEADERS = 100
#: bytes of pipelined requests buffered behind the current one before reading pauses
MAX_PIPELINED = 64 * 1024

_SERVER = server.version
_NO_BODY_CODES = http.NO_BODY_CODES
_RESPONSES = http.RESPONSES
_PROCESSING_FAILED = (b"<html><head><title>Processing Failed</title></head><body>"
                      b"<b>Processing Failed</b></body></html>")

_date_cache: list[Any] = [0, b""]
_CONNECTION, _SERVER_NAME, _DATE = map(canonical_name, ("Connection", "Server", "Date"))
_CONTENT_TYPE, _CONTENT_LENGTH, _TRANSFER_ENCODING = map(
    canonical_name, ("Content-Type", "Content-Length", "Transfer-Encoding"))
#: request header names as received -> (as ``Headers`` keeps them, what the
#: head parse does with it (``_KIND_*``), whether the name has an "_");
#: bounded (the first ``_NAMES_MAX`` names are kept)
_NAMES: dict[bytes, tuple[bytes, int, bool]] = {}
_NAMES_MAX = 4096
_KIND_OTHER, _KIND_HOST, _KIND_LENGTH, _KIND_CONNECTION, _KIND_DECLINE = range(5)
_KINDS = {b"host": _KIND_HOST, b"content-length": _KIND_LENGTH,
          b"connection": _KIND_CONNECTION, b"transfer-encoding": _KIND_DECLINE,
          b"upgrade": _KIND_DECLINE, b"expect": _KIND_DECLINE}


def _name(raw: bytes) -> tuple[bytes, int, bool]:
    known = _NAMES.get(raw)
    if known is None:
        known = (canonical_name(raw.decode("latin-1")), _KINDS.get(raw.lower(), _KIND_OTHER),
                 b"_" in raw)
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[raw] = known
    return known


def http_date() -> bytes:
    """``Date`` as twisted.web formats it, formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = http.datetimeToString(now)
    return _date_cache[1]


class _DeclineError(Exception):
    """The head is valid HTTP the fast path does not serve itself."""


class _Head:
    """httptools callbacks for one request head (fields reset per head)."""

    __slots__ = ("close", "count", "decline", "headers", "host", "length", "underscore", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, list[bytes]] = {}
        self.count = 0
        self.host: bytes | None = None
        self.length: int | None = None
        self.close = False
        self.decline = False
        #: a header name with "_" (the front door drops those)
        self.underscore = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count += 1
        known = _NAMES.get(name)
        if known is None:
            known = _name(name)
        canonical, kind, underscore = known
        if kind:
            if kind == _KIND_HOST:
                self.host = value
            elif kind == _KIND_LENGTH:
                if self.length is not None or not value.isdigit():
                    self.decline = True
                else:
                    self.length = int(value)
            elif kind == _KIND_CONNECTION:
                if _CONNECTION not in self.headers:
                    # twisted.web's rule: the first Connection header, split on spaces
                    self.close = b"close" in [t.lower() for t in value.split(b" ")]
            else:  # Transfer-Encoding, Upgrade, Expect
                self.decline = True
        if b"\r" in value or b"\n" in value:
            self.decline = True  # llhttp refuses these; twisted.web would sanitise them
        if underscore:
            self.underscore = True
        values = self.headers.get(canonical)
        if values is None:
            self.headers[canonical] = [value]
        else:
            values.append(value)


class FastRequest:
    """One request served by the fast path: the part of
    ``twisted.web.server.Request`` the gateway's code uses, with the same
    response framing (default ``Content-Type``, chunked without a
    ``Content-Length``, no body for HEAD/204/304)."""

    defaultContentType: bytes | None = b"text/html"
    clientproto = b"HTTP/1.1"
    body_stream: RequestBodyStream | None = None
    upstream_status: int | None = None
    proxy_error: str | None = None
    #: any request header name with "_" (set from the parse; True: unknown)
    underscore_names = True
    producer: Any = None
    chunked = False
    startedWriting = False
    finished = False
    _disconnected = False
    #: chunked response bytes held to the end of the upstream's read (or
    #: the response's end): see ``_send``
    _held: list[bytes] | None = None

    def __init__(self, channel: FastHTTPChannel, method: bytes, uri: bytes,
                 headers: Headers, close: bool) -> None:
        self.channel: FastHTTPChannel | None = channel
        self.transport = channel.transport
        self.method = method
        self.uri = uri
        self.path = uri.split(b"?", 1)[0]
        self.requestHeaders = headers
        # the defaults twisted.web sets, in its order
        raw = {_CONNECTION: [b"close"]} if close else {}
        raw[_SERVER_NAME] = [_SERVER]
        raw[_DATE] = [http_date()]
        self.responseHeaders = headers_from_raw(raw)
        self.code = 200
        self.code_message = b"OK"
        self.sentLength = 0
        self.content: Any = None
        self.notifications: list[defer.Deferred[None]] = []
        self.finish_hooks: list[Any] = []

    # -- what resources read -------------------------------------------------
    def getHeader(self, key: bytes) -> bytes | None:
        known = _NAMES.get(key)  # the head parse's memo of names
        if known is None:
            known = _name(key)
        values = self.requestHeaders._rawHeaders.get(known[0])
        return values[-1] if values else None

    def getClientAddress(self) -> Any:
        return self.channel_peer

    def getHost(self) -> Any:
        return self.channel_host

    def isSecure(self) -> bool:
        return self.secure

    def getCookie(self, key: bytes) -> bytes | None:  # login flows go to twisted.web
        return None

    def on_finish(self, fn: Any) -> None:
        """``fn(None)`` when the response ends, ``fn(failure)`` when the client
        is gone first: ``notifyFinish`` without a Deferred per observer."""
        self.finish_hooks.append(fn)

    def notifyFinish(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.notifications.append(d)
        return d

    # -- the response --------------------------------------------------------
    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.code_message = message if message is not None else _RESPONSES.get(
            code, b"Unknown Status")

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer:
            raise ValueError("a producer is already registered")
        self.producer = producer
        if self.channel is not None:
            self.channel.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self.channel is not None:
            self.channel.unregisterProducer()
        self.producer = None

    def _head(self) -> bytes:
        # the Headers' own dict (names canonical, values sanitised on entry):
        # no name encoding per lookup, one join for the whole block
        raw = self.responseHeaders._rawHeaders
        code = self.code
        if (code not in (304, 204) and self.defaultContentType is not None
                and _CONTENT_TYPE not in raw):
            length = raw.get(_CONTENT_LENGTH)
            if not (length and length[0] == b"0"):
                self.responseHeaders.setRawHeaders(b"content-type", [self.defaultContentType])
        if (_CONTENT_LENGTH not in raw and self.method != b"HEAD"
                and code not in _NO_BODY_CODES):
            raw[_TRANSFER_ENCODING] = [b"chunked"]
            self.chunked = True
        parts = [b"HTTP/1.1 %d %s\r\n" % (code, self.code_message)]
        for name, values in raw.items():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("Request.write called on a request after Request.finish")
        if self._disconnected:
            return
        transport = self.transport
        if not self.startedWriting:
            self.startedWriting = True
            head = self._head()
            if self.method == b"HEAD" or self.code in _NO_BODY_CODES:
                transport.write(head)
                self.write = _ignore  # type: ignore[method-assign]
                return
            self.sentLength += len(data)
            if self.chunked:
                self._send(b"%s%x\r\n%s\r\n" % (head, len(data), data) if data else head)
            elif not data:
                transport.write(head)
            else:
                transport.write(head + data)
            return
        if not data:
            return
        self.sentLength += len(data)
        if self.chunked:
            self._send(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            transport.write(data)

    def _send(self, piece: bytes) -> None:
        """Chunked bytes out.  While the upstream client is parsing a read
        (its producer's ``hold_until_read_end``) they are held and go out at
        the end of that read, or with the ``0\\r\\n\\r\\n`` terminator when
        the message ended in it: one transport write (one TLS record, one
        segment) per upstream read.  Held bytes are bounded by one read."""
        held = self._held
        if held is not None:
            held.append(piece)
            return
        hold = getattr(self.producer, "hold_until_read_end", None)
        if hold is not None and hold(self._flush_held):
            self._held = [piece]
            return
        self.transport.write(piece)

    def _flush_held(self) -> None:
        held, self._held = self._held, None
        if held and not self._disconnected:
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def finish(self) -> None:
        if self._disconnected:
            raise RuntimeError("Request.finish called on a request after its "
                               "connection was lost")
        if self.finished:
            return
        if not self.startedWriting:
            if self._held is None:
                self._held = []  # the head goes out with the terminator
            self.write(b"")
        if self.chunked:
            held, self._held = self._held, None
            if held:
                held.append(b"0\r\n\r\n")
                self.transport.write(b"".join(held))
            else:
                self.transport.write(b"0\r\n\r\n")
        else:
            self._held = None
        self.finished = True
        channel = self.channel
        if self.body_stream is not None and not self.body_stream.complete:
            # The response ended before the streamed body did: the rest is unread.
            self.body_stream.stopProducing()
            if channel is not None:
                channel.persistent = False
        if self.producer is not None:
            self.unregisterProducer()
        self.channel = None
        self._run_hooks(None)
        notifications, self.notifications = self.notifications, []
        for d in notifications:
            d.callback(None)
        if channel is not None:
            channel.fast_done(self)

    def connectionLost(self, reason: Failure) -> None:
        self._disconnected = True
        self._held = None
        self.channel = None
        if self.body_stream is not None:
            self.body_stream.abort(reason)
        self._run_hooks(reason)
        notifications, self.notifications = self.notifications, []
        for d in notifications:
            d.errback(reason)

    def _run_hooks(self, result: Any) -> None:
        hooks, self.finish_hooks = self.finish_hooks, []
        for fn in hooks:
            try:
                fn(result)
            except Exception:
                log.failure("fast path: a finish observer failed")

    def processing_failed(self, reason: Failure) -> None:
        """An exception out of the resource: twisted.web's 500 page."""
        log.failure("fast path: processing failed", failure=reason)
        if self.finished or self._disconnected or self.startedWriting:
            if not self._disconnected and self.channel is not None:
                self.channel.transport.abortConnection()
            return
        self.setResponseCode(500)
        self.setHeader(b"content-type", b"text/html")
        self.setHeader(b"content-length", b"%d" % len(_PROCESSING_FAILED))
        self.write(_PROCESSING_FAILED)
        self.finish()


def _ignore(_data: bytes) -> None:
    pass


class FastHTTPChannel(StreamingHTTPChannel):
    """See the module docstring.  ``fast`` is True until the connection is
    handed to the twisted.web path."""

    fast = True
    fast_requests = 0
    _buf = b""
    _current: FastRequest | None = None
    #: a parsed request waiting for the rest of its buffered body
    _waiting: tuple[FastRequest, int] | None = None
    _body_left = 0
    _pumping = False
    _closing = False
    _read_paused = False
    _peer: Any = None
    _host: Any = None
    _secure: bool | None = None
    #: the request parser, kept across bodiless keep-alive requests (llhttp
    #: is back at the start of a message after one), and its callbacks
    _parser: Any = None
    _parse_head: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._peer = self.transport.getPeer()
        self._host = self.transport.getHost()
        self._secure = ISSLTransport(self.transport, None) is not None

    # -- bytes in --------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if not self.fast:
            super().dataReceived(data)
            return
        if self._closing:
            return
        if not self._protocol_checked:
            self._protocol_checked = True
            if (getattr(self.transport, "negotiatedProtocol", None) == b"h2"
                    or data.startswith(H2C_PREFACE)):  # ALPN h2, or h2c prior knowledge
                self.fast = False
                self._protocol_checked = False
                super().dataReceived(data)
                return
        if self._body_left:
            self.resetTimeout()  # a streamed body's bytes: a stall is idle time
            data = self._feed_body(data)
            if not data:
                return
        self._buf += data
        if self._current is not None or self._pumping:
            if len(self._buf) > MAX_PIPELINED and not self._read_paused:
                self._read_paused = True
                self.transport.pauseProducing()
            return
        self._pump()
        if self._current is None or self._body_left:
            # Bytes that leave no request in flight (a partial head, a
            # response already ended) restart the idle time.  While a request
            # is served the idle timer does not close the connection
            # (``timeoutConnection`` re-arms it) and ``fast_done`` restarts
            # it when the response ends: the same closing time without a
            # second timer reset per request.
            self.resetTimeout()

    def _feed_body(self, data: bytes) -> bytes:
        """Give the streamed body its bytes; returns what follows it."""
        left = self._body_left
        req = self._current
        chunk, rest = (data, b"") if len(data) <= left else (data[:left], data[left:])
        self._body_left = left - len(chunk)
        if req is not None and req.body_stream is not None:
            req.body_stream.feed(chunk)
            if not self._body_left:
                req.body_stream.finish()
        return rest

    def _pump(self) -> None:
        """Serve complete requests from the buffer, one at a time."""
        self._pumping = True
        try:
            while self.fast and not self._closing and self._current is None and self._buf:
                if self._waiting is not None:
                    req, need = self._waiting
                    if len(self._buf) < need:
                        return
                    self._waiting = None
                    req.content = BytesIO(self._buf[:need])
                    self._buf = self._buf[need:]
                    self._dispatch(req)
                    continue
                if not self._next_request():
                    return
        finally:
            self._pumping = False
            if (self.fast and not self._closing and self._buf and self._current is None
                    and self._waiting is None):
                self._arm_head_deadline()  # a partial head is waiting

    def _next_request(self) -> bool:
        """Parse the head at the start of the buffer; False when it is not
        complete yet (or the connection went to twisted.web)."""
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_FAST_HEAD or buf[:1] in (b"\r", b"\n"):
                self._hand_over()
            return False
        end += 4
        if end > MAX_FAST_HEAD or buf[:1] in (b"\r", b"\n"):
            self._hand_over()
            return False
        parser = self._parser
        if parser is None:
            head = self._parse_head = _Head()
            parser = self._parser = httptools.HttpRequestParser(head)
        else:  # llhttp is at the start of a message again: new fields, same parser
            head = self._parse_head
            head.__init__()  # type: ignore[misc]
        try:
            parser.feed_data(buf[:end])
            method = parser.get_method()
            if (head.decline or parser.get_http_version() != "1.1"
                    or head.count > MAX_FAST_HEADERS or not head.url.startswith(b"/")
                    or method == b"CONNECT"):
                raise _DeclineError()
            fast_route = getattr(self.site.resource, "fast_route", None)
            if fast_route is None or not fast_route(head.host or b""):
                raise _DeclineError()
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, _DeclineError):
            self._parser = None
            self._hand_over()
            return False
        if head.length or head.close:
            # llhttp now waits for a body it is never fed (or the connection
            # ends): the next head gets a fresh parser
            self._parser = None
        self._cancel_head_deadline()
        req = FastRequest(self, method, head.url, headers_from_raw(head.headers), head.close)
        req.underscore_names = head.underscore
        req.channel_peer = self._peer  # type: ignore[attr-defined]
        req.channel_host = self._host  # type: ignore[attr-defined]
        req.secure = self._secure  # type: ignore[attr-defined]
        self.persistent = not head.close
        length = head.length
        self._buf = buf[end:]
        if not length:
            if length == 0:
                req.content = BytesIO()
            self._dispatch(req)
        elif length <= STREAM_THRESHOLD:
            # buffered and dispatched complete, as twisted.web does
            self._waiting = (req, length)
        else:
            req.content = BytesIO()
            req.body_stream = RequestBodyStream(req, length)  # type: ignore[arg-type]
            self._body_left = length
            self._dispatch(req)
            if self._current is req and self._buf:
                rest, self._buf = self._buf, b""
                rest = self._feed_body(rest)
                self._buf = rest + self._buf
        return True

    def _dispatch(self, req: FastRequest) -> None:
        self._current = req
        self._handlingRequest = True
        self.fast_requests += 1
        try:
            body = self.site.resource.render(req)
        except Exception:
            req.processing_failed(Failure())
            return
        if isinstance(body, bytes) and not req.finished and not req._disconnected:
            req.setHeader(b"content-length", b"%d" % len(body))
            req.write(body)
            req.finish()

    def fast_done(self, req: FastRequest) -> None:
        """``req`` finished its response: the next request, or close."""
        if req is not self._current:
            return
        self._current = None
        self._handlingRequest = False
        if not self.persistent or self._body_left:
            self._closing = True
            self._buf = b""
            self.loseConnection()
            return
        self.resetTimeout()
        if self._read_paused:
            self._read_paused = False
            self.transport.resumeProducing()
        if self._buf and not self._pumping:
            self._pump()

    def _hand_over(self) -> None:
        """Give this connection to the twisted.web path, replaying what the
        fast path buffered (at a request boundary: nothing is in flight)."""
        self.fast = False
        data, self._buf = self._buf, b""
        self._cancel_head_deadline()
        if self._read_paused:
            self._read_paused = False
            self.transport.resumeProducing()
        self._protocol_checked = True
        if data:
            StreamingHTTPChannel.dataReceived(self, data)

    def timeoutConnection(self) -> None:
        if self._current is not None and not self._body_left:
            # idle time does not run while a request is served (a client
            # stalling its request body is idle, as on twisted.web)
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    def connectionLost(self, reason: Failure) -> None:
        current, self._current = self._current, None
        self._waiting = None
        if current is not None:
            current.connectionLost(reason)
        super().connectionLost(reason)
