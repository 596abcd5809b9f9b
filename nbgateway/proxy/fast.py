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
  per request: a response's end is recorded, and the idle timer, when it
  fires before the idle time is over, waits the rest).

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

This module owns the connection side (:class:`FastHTTPChannel`: buffering,
pipelining, bodies, the hand-over); the request head's callbacks and the
request are :mod:`nbgateway.proxy.fast_request` (``FastRequest``,
``_Head``, ``_NAMES``, ``http_date`` are importable from here as before).
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

import httptools
from twisted.internet.interfaces import ISSLTransport
from twisted.python.failure import Failure
from twisted.python.runtime import seconds as runtime_seconds
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET

from nbgateway.proxy.fast_request import (  # noqa: F401 (re-exported)
    _NAMES,
    _NAMES_MAX,
    FastRequest,
    ParsedHeaders,
    _DeclineError,
    _Head,
    _Url,
    http_date,
    near_line,
    one_line_differs,
)
from nbgateway.proxy.streaming import (
    H2C_PREFACE,
    STREAM_THRESHOLD,
    RequestBodyStream,
    StreamingHTTPChannel,
)

#: a head larger than this goes to twisted.web (which enforces its own limits)
MAX_FAST_HEAD = 8 * 1024
#: a fast request with more header lines goes to twisted.web
MAX_FAST_HEADERS = 100
#: a header section differing from the last in one value takes the kept parse
#: from this many lines of it split at CRLF (six header lines; the two ends
#: are empty): with fewer, parsing header by header costs less than the
#: split, the compare and the copy (measured: +2.2k instructions with three)
NEAR_MIN_LINES = 8
#: (and a section shorter than this is not split at all)
NEAR_MIN_BYTES = 96
#: bytes of pipelined requests buffered behind the current one before reading pauses
MAX_PIPELINED = 64 * 1024
_new_headers = Headers.__new__



class FastHTTPChannel(StreamingHTTPChannel):
    """See the module docstring.  ``fast`` is True until the connection is
    handed to the twisted.web path."""

    # The state the fast path reads and writes per request is in slots:
    # fixed offsets, read and written by the interpreter's specialised
    # instructions whatever else the connection's dict holds.  In the dict,
    # CPython 3.11 keeps a class's instances' attribute values inline only for
    # the first names its instances set (at most 30, and one fewer for every
    # instance made while the first ones still add names); past that, every
    # instance that adds a name gets a dict of its own, where each attribute
    # read is a hash lookup (~60 % slower).  With many connections open at
    # once, or a connection handed to twisted.web or HTTP/2 first, the fast
    # channels' dict attributes went that way; the slots cannot (see
    # tests/proxy/test_instance_layout.py).  ``__init__`` sets every slot.
    # (with StreamingHTTPChannel's _head_deadline, _protocol_checked and
    # _linger_left, and twisted's transport, site, persistent,
    # _handlingRequest and _requestProducer*: their class defaults are
    # set in __init__)
    __slots__ = (
        "_body_left", "_buf", "_closing", "_conn_info", "_current", "_handlingRequest",
        "_head_deadline", "_idle_from", "_linger_left", "_parsing", "_protocol_checked",
        "_pumping", "_read_paused", "_requestProducer", "_requestProducerStreaming", "_waiting",
        "fast", "fast_requests", "persistent", "site", "transport",
    )

    def __init__(self) -> None:
        #: True until the connection is handed to the twisted.web path
        self.fast = True
        self.fast_requests = 0
        self._buf = b""
        self._current: FastRequest | None = None
        #: a parsed request waiting for the rest of its buffered body
        self._waiting: tuple[FastRequest, int] | None = None
        self._body_left = 0
        self._pumping = False
        self._closing = False
        self._read_paused = False
        #: when the last response ended (the reactor's clock): ``fast_done``
        #: records it instead of resetting the idle timer, ``timeoutConnection``
        #: reads it (see there)
        self._idle_from = 0.0
        #: (peer address, its host as the front resource logs it -- see
        #: FastRequest.peer_ip --, host address, TLS?, the clock, the site
        #: resource's fast_route), made once per connection
        self._conn_info: tuple[Any, str, Any, bool, Callable[[], float], Any] | None = None
        #: (the request parser, its callbacks' head), kept across bodiless
        #: keep-alive requests (llhttp is back at the start of a message
        #: after one)
        self._parsing: tuple[Any, _Head] | None = None
        self._head_deadline: Any = None
        self._protocol_checked = False
        self._linger_left = 0
        self.transport: Any = None
        self.site: Any = None
        self.persistent = 1
        self._requestProducer: Any = None
        self._requestProducerStreaming: Any = None
        super().__init__()  # twisted's: _handlingRequest, the twisted.web path's state

    @property
    def _parser(self) -> Any:
        """The kept request parser (None: the next head gets a fresh one)."""
        return None if self._parsing is None else self._parsing[0]

    def connectionMade(self) -> None:
        super().connectionMade()
        # the clock of callLater: the site's reactor's (a channel made
        # without a site times out on the global reactor, whose clock this is)
        site = self.site
        seconds = site.reactor.seconds if site is not None else runtime_seconds
        peer = self.transport.getPeer()
        # and the resource's fast_route (None: every head goes to twisted.web)
        fast_route = getattr(getattr(site, "resource", None), "fast_route", None)
        self._conn_info = (peer, str(getattr(peer, "host", "") or ""), self.transport.getHost(),
                           ISSLTransport(self.transport, None) is not None, seconds, fast_route)

    # -- bytes in --------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if not self.fast:
            super().dataReceived(data)
            return
        if self._closing:
            if self._linger_left:
                self.linger_discard(data)  # a lingering close: bounded
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
            # (``timeoutConnection`` re-arms it) and ``fast_done`` records
            # when the response ended (the timer then waits the rest): the
            # same closing time without a timer reset per request.
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
        # The header section (after the request line's LF, to the blank
        # line): when it is byte for byte the section of this connection's
        # previous head (browsers send the same lines on every request of a
        # connection), llhttp parses the head with a parser that hands Python
        # only the target, and the parse of that section is reused (kept from
        # the second time a section repeats: a copy of its headers).
        section = buf[buf.find(b"\n") + 1:end]
        parsing = self._parsing
        same = hit = False
        # a section that differs from the last one in one header's value
        # (a browser's Referer, Accept, Sec-Fetch-Dest): its line's index, and
        # (name, value, plan line start) when the kept parse takes it
        one = -1
        near: tuple[bytes, bytes, bytes] | None = None
        lines = None
        if parsing is None:
            head = _Head()
            parser = httptools.HttpRequestParser(head)
            self._parsing = (parser, head)
        else:  # llhttp is at the start of a message again: new fields, same parser
            parser, head = parsing
            if section == head.block:
                same = True
                hit = head.parsed is not None
            elif head.lines is not None:  # (a short section is never split)
                lines = section.split(b"\r\n")
                if len(lines) >= NEAR_MIN_LINES:
                    one = one_line_differs(head.lines, lines)
                if one >= 0:
                    near = near_line(head.lines, lines, one)  # type: ignore[arg-type]
                    if near is not None and head.parsed is not None:
                        hit = self._near(head, near)
                        if not hit:  # (the kept parse has the name twice: not kept again)
                            near = None
            if not hit:
                # head.__init__(), inline: the fields of a new head
                head.url = b""
                head.headers = {}
                head.copy = []
                head.copy_ok = True
                head.count = 0
                head.host = None
                head.length = None
                head.close = False
                head.decline = False
                head.underscore = False
        try:
            if hit:
                lean = head.lean
                if lean is None:
                    target = _Url()
                    lean = head.lean = (httptools.HttpRequestParser(target), target)
                parser, target = lean
                target.url = b""
                parser.feed_data(buf[:end])
                head.url = target.url
            else:
                parser.feed_data(buf[:end])
            method = parser.get_method()
            if (head.decline or parser.get_http_version() != "1.1"
                    or head.count > MAX_FAST_HEADERS or not head.url.startswith(b"/")
                    or method == b"CONNECT"):
                raise _DeclineError()
            fast_route = self._conn_info[5]  # type: ignore[index] (the site resource's)
            route = None if fast_route is None else fast_route(head.host or b"")
            if not route:
                raise _DeclineError()
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, _DeclineError):
            self._parsing = None
            self._hand_over()
            return False
        if head.length or head.close:
            # llhttp now waits for a body it is never fed (or the connection
            # ends): the next head gets a fresh parser
            self._parsing = None
        if self._head_deadline is not None:
            self._cancel_head_deadline()
        if hit:  # the request's own copy (the front door and the proxy change it)
            if not same:  # a near repeat: the kept parse has its one new value
                head.block = section
                head.lines = lines
            parsed = head.parsed
            # a copy of the dict (its size at once, no resizes), then new lists
            raw = parsed.copy()  # type: ignore[union-attr]
            for name, values in parsed.items():  # type: ignore[union-attr]
                raw[name] = values.copy()
        else:
            raw = head.headers
            if same or near is not None:
                # kept: a section that came twice in a row, or that differs
                # from the last in one value the next near repeat can take
                head.parsed = {name: values.copy() for name, values in raw.items()}
            else:
                head.parsed = None
            if not same:
                head.block = section
                if lines is None and len(section) >= NEAR_MIN_BYTES:
                    lines = section.split(b"\r\n")
                head.lines = lines if lines is not None and len(lines) >= NEAR_MIN_LINES else None
        headers = _new_headers(ParsedHeaders)  # headers_from_raw(raw), inline
        headers._rawHeaders = raw
        headers.changed = False
        req = FastRequest(self, method, head.url, headers, head.close, head.underscore,
                          self._conn_info)
        if head.copy_ok:
            req.upstream_copy = (head.copy, len(raw))
        self.persistent = not head.close
        length = head.length
        self._buf = buf[end:]
        if not length:
            if length == 0:
                req.content = BytesIO()
            req.routed = route  # dispatched now: the route just found still holds
            self._dispatch(req)
        elif length <= STREAM_THRESHOLD:
            # buffered and dispatched complete, as twisted.web does
            self._waiting = (req, length)
        else:
            req.content = BytesIO()
            req.body_stream = RequestBodyStream(req, length)  # type: ignore[arg-type]
            self._body_left = length
            req.routed = route
            self._dispatch(req)
            if self._current is req and self._buf:
                rest, self._buf = self._buf, b""
                rest = self._feed_body(rest)
                self._buf = rest + self._buf
        return True

    @staticmethod
    def _near(head: _Head, near: tuple[bytes, bytes, bytes]) -> bool:
        """Put the near repeat's one new value into the kept parse (and its
        plan line) when that parse has the name once: True; else False (the
        head is parsed header by header).  The kept parse is never handed
        out (each request gets a copy), so it is the last section's parse."""
        name, value, prefix = near
        parsed = head.parsed
        values = parsed.get(name)  # type: ignore[union-attr]
        if values is None or len(values) != 1:
            return False
        if prefix and head.copy_ok:
            # the plan's lines: (start, value, CRLF) per copied name, in order
            copy = head.copy
            try:
                at = copy.index(prefix)
            except ValueError:
                return False
            if at % 3 or copy[at + 1] != values[0]:
                return False
            copy = copy.copy()  # (requests before hold the old list)
            copy[at + 1] = value
            head.copy = copy
        parsed[name] = [value]  # type: ignore[index]
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
        # NOT_DONE_YET (the proxy's answer) first: an isinstance() that
        # fails reads the object's __class__
        if (body is not NOT_DONE_YET and isinstance(body, bytes) and not req.finished
                and not req._disconnected):
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
            if self._body_left:
                self.linger_close()  # the rest of the body is still coming
            else:
                self.loseConnection()
            return
        # The connection is idle from now: recorded, not a timer reset per
        # response (timeoutConnection re-arms a timer that fires early).
        self._idle_from = self._conn_info[4]()  # type: ignore[index]
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
        period = self.timeOut
        if period is not None:
            # the timer runs from its last reset; a response that ended
            # later (``fast_done``) moves the idle time's end: wait the rest
            left = self._idle_from + period - self._conn_info[4]()  # type: ignore[index]
            if left > 0:
                self.setTimeout(left)
                self.timeOut = period  # the next full wait is the idle timeout again
                return
        super().timeoutConnection()

    def connectionLost(self, reason: Failure) -> None:
        current, self._current = self._current, None
        self._waiting = None
        if current is not None:
            current.connectionLost(reason)
        super().connectionLost(reason)
