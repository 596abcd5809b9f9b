"""twisted.web plumbing for a streaming reverse proxy.

Stock ``twisted.web`` reads a whole request body into ``request.content``
before it renders anything.  :class:`StreamingRequest` (with
:class:`StreamingHTTPChannel`, served by :class:`ProxySite`) instead
dispatches a request as soon as its headers are complete when the body is
chunked or larger than :data:`STREAM_THRESHOLD`; the body is then exposed as
``request.body_stream``, a :class:`RequestBodyStream` that is an
``IBodyProducer`` for ``twisted.web.client.Agent``.  Backpressure: when the
upstream consumer pauses (or more than :data:`HIGH_WATER` bytes are
waiting), reading from the client transport is paused; small bodies are
buffered as usual (``request.content``), so resources that read forms keep
working.

The channel can also hand its transport to another protocol after a
protocol switch (:meth:`StreamingHTTPChannel.take_over`, used for WebSocket
and other ``Upgrade`` pass-through).  On a TLS connection whose ALPN chose
``h2`` it hands itself to Twisted's ``H2Connection`` (the ``h2`` package) at
the first byte, and so does a plain connection that opens with the HTTP/2
preface (h2c with prior knowledge, as gRPC clients send it); HTTP/2 streams
use the same request class and resources.
"""

from __future__ import annotations

import os
from collections import deque
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.http import H2_ENABLED
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from nbgateway.proxy.headers import connection_close

log = Logger()

STREAM_THRESHOLD = 64 * 1024  # larger (or chunked) bodies are streamed
#: the HTTP/2 client preface's first line: cleartext HTTP/2 with prior
#: knowledge (h2c, RFC 9113 3.3; gRPC over a plain listener)
H2C_PREFACE = b"PRI * HTTP/2.0\r\n"
HIGH_WATER = 256 * 1024  # pause the client when this much body is waiting
LOW_WATER = 64 * 1024
DEFAULT_HEADER_TIMEOUT = 30.0  # upstream's per-account inbound servers
DEFAULT_IDLE_TIMEOUT = 90.0
#: lingering close: after a response that ended before its request body did,
#: the rest of the body is read and discarded for at most this long (s) ...
LINGER_TIMEOUT = 5.0
#: ... and at most this many bytes, before the connection is closed
LINGER_MAX_BYTES = 1024 * 1024


@implementer(IBodyProducer)
class RequestBodyStream:
    """The body of a :class:`StreamingRequest`, produced to one consumer.

    ``max_buffered`` and ``pauses`` record how much body ever waited in
    memory and how often the client was paused (bounded-buffering proof)."""

    def __init__(self, request: StreamingRequest, length: int | None) -> None:
        self.request = request
        self.length = UNKNOWN_LENGTH if length is None else length
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self.max_buffered = 0
        self.received = 0
        self.sent = 0  # bytes handed to the consumer (progress for deadlines)
        self.pauses = 0
        self.complete = False
        self._consumer: Any = None
        self._consumer_paused = False
        self._net_paused = False
        self._stopped = False
        self._done: defer.Deferred[None] | None = None
        self._failure: Any = None

    # -- fed by the request ------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._stopped or self.complete:
            return
        self.received += len(data)
        if self._consumer is not None and not self._consumer_paused and not self._chunks:
            self.sent += len(data)
            self._consumer.write(data)
        else:
            self._chunks.append(data)
            self.buffered += len(data)
            self.max_buffered = max(self.max_buffered, self.buffered)
        self._update_network()

    def finish(self) -> None:
        self.complete = True
        self._maybe_done()

    def abort(self, reason: Any) -> None:
        """The client went away before the body was complete."""
        if self.complete or self._stopped:
            return
        self._stopped = True
        self._chunks.clear()
        self.buffered = 0
        self._failure = reason
        if self._done is not None and not self._done.called:
            d, self._done = self._done, None
            d.errback(reason)

    # -- IBodyProducer -----------------------------------------------------
    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        self._consumer = consumer
        self._done = defer.Deferred()
        if self._failure is not None:
            d, self._done = self._done, None
            d.errback(self._failure)
            return d
        d = self._done
        self._flush()
        return d

    def pauseProducing(self) -> None:
        self._consumer_paused = True
        self._update_network()

    def resumeProducing(self) -> None:
        self._consumer_paused = False
        self._flush()

    def stopProducing(self) -> None:
        """The upstream request was abandoned (error, timeout, early response)."""
        self._stopped = True
        self._chunks.clear()
        self.buffered = 0
        self._done = None
        self._resume_network()

    # -- internals ---------------------------------------------------------
    def _flush(self) -> None:
        while self._chunks and self._consumer is not None and not self._consumer_paused:
            chunk = self._chunks.popleft()
            self.buffered -= len(chunk)
            self.sent += len(chunk)
            self._consumer.write(chunk)
        self._update_network()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.complete and not self._chunks and self._done is not None:
            d, self._done = self._done, None
            d.callback(None)

    def _update_network(self) -> None:
        want_pause = not self.complete and not self._stopped and (
            self._consumer_paused or self.buffered > HIGH_WATER
            or (self._consumer is None and self.buffered > LOW_WATER))
        if want_pause:
            # Re-pause even if we think we are paused: the HTTP channel
            # resumes its transport when the response side drains.
            transport = _flow(self.request)
            if transport is not None:
                if not self._net_paused:
                    self.pauses += 1
                self._net_paused = True
                transport.pauseProducing()
        elif self._net_paused and self.buffered <= LOW_WATER:
            self._resume_network()

    def _resume_network(self) -> None:
        if self._net_paused:
            self._net_paused = False
            transport = _flow(self.request)
            if transport is not None and not getattr(transport, "disconnecting", False):
                transport.resumeProducing()


def _flow(request: Any) -> Any:
    """What to pause to stop a client's request body: the connection's
    transport (HTTP/1.1) or the HTTP/2 stream (its flow-control window)."""
    transport = getattr(request, "transport", None)
    if transport is not None:
        return transport
    channel = getattr(request, "channel", None)  # gone once the request finished
    return channel if channel is not None and hasattr(channel, "pauseProducing") else None


class StreamingRequest(server.Request):
    """A ``server.Request`` that can be rendered before its body arrived."""

    body_stream: RequestBodyStream | None = None
    _dispatched = False
    #: no fast-path route to hand on (the front resource reads it: a class
    #: attribute, not a missing-attribute lookup per request)
    routed: Any = None

    def gotLength(self, length: int | None) -> None:
        if length is None or length > STREAM_THRESHOLD:
            self.body_stream = RequestBodyStream(self, length)
            self.content = BytesIO()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_stream is not None:
            if not self._dispatched and not isinstance(self.channel, http.HTTPChannel):
                # HTTP/2: the stream's headers are complete once DATA arrives
                self.dispatch_early(self.channel.command, self.channel.path, b"HTTP/2")
            self.body_stream.feed(data)
        else:
            super().handleContentChunk(data)

    def dispatch_early(self, command: bytes, path: bytes | None, version: bytes) -> None:
        self._dispatched = True
        # an HTTP/2 CONNECT has no :path (twisted.web cannot parse None):
        # '*', which the front door refuses with 400
        super().requestReceived(command, b"*" if path is None else path, version)

    def requestReceived(self, command: bytes, path: bytes | None, version: bytes) -> None:
        if path is None:
            path = b"*"  # as in dispatch_early
        if not self._dispatched and self.body_stream is not None:
            self.dispatch_early(command, path, version)  # HTTP/2: an empty streamed body
        if self._dispatched:
            if self.body_stream is not None:
                self.body_stream.finish()
            return
        super().requestReceived(command, path, version)

    def write(self, data: bytes) -> None:
        channel = getattr(self, "channel", None)  # gone once the request finished
        if self.startedWriting or not isinstance(channel, StreamingHTTPChannel):
            super().write(data)
            return
        # The first write sends the status line and headers: hold them and send
        # them with the first body bytes in ONE transport write (one TCP segment
        # and one WireGuard packet for a small response instead of two).
        channel.hold_writes()
        try:
            super().write(data)
        finally:
            channel.release_writes()

    @property
    def body_complete(self) -> bool:
        return self.body_stream is None or self.body_stream.complete

    def finish(self) -> None:
        if not self.body_complete and self.channel is not None:
            # The response ended before the request body did: this
            # connection cannot be reused (the rest of the body is unread).
            self.channel.persistent = False
            if self.body_stream is not None:
                self.body_stream.stopProducing()
        super().finish()

    def connectionLost(self, reason: Any) -> None:
        if self.body_stream is not None:
            self.body_stream.abort(reason)
        super().connectionLost(reason)


class StreamingHTTPChannel(http.HTTPChannel):
    """``HTTPChannel`` that dispatches streaming requests at end of headers
    and supports handing the connection to another protocol.

    Read-header deadline: from the first byte of a request until
    the end of its headers at most ``header_timeout`` seconds may pass, or
    the client gets ``408`` and the connection is closed.  Twisted's own
    timeout is an idle timeout reset by every byte, which a slowloris client
    dribbling one header byte at a time would never trigger.

    Lingering close (as nginx's ``lingering_close``): a response that ends
    before its request body did (a 413, a refusal, an upstream that answered
    early) cannot leave the connection persistent, but closing it at once
    with the client's body bytes still arriving makes the peer's TCP answer
    with a reset, and a reset can destroy the response before the client has
    read it.  The channel instead closes its write half after the response
    (where the transport can), reads and discards the rest for at most
    :data:`LINGER_TIMEOUT` seconds and :data:`LINGER_MAX_BYTES` bytes, and
    closes when the client does or a bound is reached."""

    upgraded: Any = None
    #: the HTTP/2 connection that took over after ALPN ``h2`` (else None)
    h2: Any = None
    _protocol_checked = False
    header_timeout: float | None = DEFAULT_HEADER_TIMEOUT
    _head_deadline: Any = None
    _in_body = False
    header_timeouts = 0
    #: lingering: the deadline (a delayed call), and the bytes still allowed
    #: (0: not lingering; -1: the bound was reached, the close is under way)
    _linger_call: Any = None
    _linger_left = 0
    _linger_next_close = False

    _held: list[bytes] | None = None

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """twisted.web's rule, with ``Connection`` read as the comma-separated
        list RFC 9110 (7.6.1) makes it: twisted.web splits its first value on
        spaces only, so ``close, X-Foo`` or ``keep-alive,close`` kept the
        connection open.  Any ``close`` token in any ``Connection`` field
        closes (:func:`~nbgateway.proxy.headers.connection_close`, as the
        fast path reads it)."""
        if version == b"HTTP/1.1" and connection_close(
                request.requestHeaders.getRawHeaders(b"connection") or ()):
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def hold_writes(self) -> None:
        """Collect what the request writes until :meth:`release_writes`."""
        self._held = []

    def release_writes(self) -> None:
        held, self._held = self._held, None
        if held and self.transport is not None:
            self.transport.write(b"".join(held))

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            super().write(data)

    def writeSequence(self, iovec: Any) -> None:
        if self._held is not None:
            self._held.extend(iovec)
        else:
            super().writeSequence(iovec)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if self._held is None or not hasattr(headers, "getAllRawHeaders"):
            self.release_writes()
            super().writeHeaders(version, code, reason, headers)
            return
        held = self._held
        held += (version, b" ", code, b" ", reason, b"\r\n")
        for name, values in headers.getAllRawHeaders():
            for value in values:
                held += (name, b": ", value, b"\r\n")
        held.append(b"\r\n")

    def _arm_head_deadline(self) -> None:
        if self.header_timeout and self._head_deadline is None:
            self._head_deadline = self.callLater(self.header_timeout, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        self.header_timeouts += 1
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                                 b"Content-Length: 0\r\n\r\n")
            self.transport.loseConnection()

    def allHeadersReceived(self) -> None:
        self._cancel_head_deadline()
        self._in_body = True
        super().allHeadersReceived()
        req = self.requests[-1] if self.requests else None
        if isinstance(req, StreamingRequest) and req.body_stream is not None:
            req.dispatch_early(self._command, self._path, self._version)

    def allContentReceived(self) -> None:
        self._in_body = False
        req = self.requests[-1] if self.requests else None
        if req is None or getattr(req, "finished", False):
            # The response already ended (connection marked non-persistent
            # and closing); just drop the rest of the body.
            return
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        if self.upgraded is not None:
            if request in self.requests:
                self.requests.remove(request)
            return
        if not self.persistent and self._in_body:  # a request body still arriving
            self._linger_next_close = True  # the close that follows lingers
        super().requestDone(request)

    def _switch_to_h2(self) -> None:
        """ALPN chose ``h2``: Twisted's ``H2Connection`` takes this connection.

        Its streams build requests with this site's ``requestFactory``
        (:class:`StreamingRequest`), so the resources, auth, identity stamping
        and access log are the same as on HTTP/1.1.  The HTTP/1.1 read-header
        deadline does not apply (HTTP/2 has the idle timeout only)."""
        from nbgateway.proxy.h2trailers import TrailersH2Connection

        # Twisted's H2Connection plus response trailers (gRPC), see h2trailers
        conn = TrailersH2Connection(getattr(self.site, "reactor", None))
        conn.requestFactory = self.requestFactory
        conn.site = self.site
        conn.factory = self.factory
        conn.timeOut = self.timeOut
        conn.callLater = self.callLater
        self.h2 = conn
        self.take_over(conn)
        # the H2 connection applies backpressure to the transport itself
        self._networkProducer.registerProducer(conn, True)

    def take_over(self, protocol: Any) -> None:
        """Give this connection's byte stream (and any bytes already
        buffered after the request head) to ``protocol``."""
        self.upgraded = protocol
        self._cancel_head_deadline()
        self.setTimeout(None)
        self._networkProducer.unregisterProducer()
        buffered = b"".join(self._dataBuffer)
        self._dataBuffer = []
        protocol.makeConnection(self.transport)
        self._networkProducer.resumeProducing()
        if buffered:
            protocol.dataReceived(buffered)

    # -- closing -----------------------------------------------------------
    def loseConnection(self) -> None:
        if self._linger_next_close:  # set by requestDone, for this close only
            self._linger_next_close = False
            self.linger_close()
            return
        super().loseConnection()

    def linger_close(self) -> None:
        """Close after discarding the rest of the client's bytes (bounded);
        see the class docstring."""
        if self._linger_call is not None or self.transport is None:
            return
        self._linger_left = LINGER_MAX_BYTES
        self._linger_call = self.callLater(LINGER_TIMEOUT, self._linger_over)
        self._cancel_head_deadline()
        self.setTimeout(None)
        self._networkProducer.unregisterProducer()
        transport = self.transport
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()  # FIN once the response is written
        transport.resumeProducing()

    def linger_discard(self, data: bytes) -> None:
        """Bytes that arrived while lingering: dropped, within the bound."""
        if self._linger_left > 0:
            self._linger_left -= len(data)
            if self._linger_left <= 0:
                self._linger_over()

    def _linger_over(self) -> None:
        call, self._linger_call = self._linger_call, None
        if call is not None and call.active():
            call.cancel()
        self._linger_left = -1  # anything more is dropped until the close
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._linger_left:  # a lingering close
            self.linger_discard(data)
            return
        if self.upgraded is not None:
            self.upgraded.dataReceived(data)
            return
        if not self._protocol_checked:
            self._protocol_checked = True
            if H2_ENABLED and data and (
                    getattr(self.transport, "negotiatedProtocol", None) == b"h2"
                    or data.startswith(H2C_PREFACE)):
                self._switch_to_h2()
                self.upgraded.dataReceived(data)
                return
        if data and not self._in_body and not self._handlingRequest:
            self._arm_head_deadline()  # a new request head starts
        super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        self._cancel_head_deadline()
        if self._linger_call is not None:
            call, self._linger_call = self._linger_call, None
            if call.active():
                call.cancel()
        if self.upgraded is not None:
            upgraded, self.upgraded = self.upgraded, None
            upgraded.connectionLost(reason)
        super().connectionLost(reason)


class ProxySite(server.Site):
    """A ``Site`` whose channels stream request bodies (HTTP/1.1; HTTP/2
    after ALPN ``h2`` on TLS).

    ``timeout`` is the idle timeout (default 90 s, the per-account inbound
    servers' value upstream; the public listener uses 120 s) and
    ``header_timeout`` the read-header deadline (default 30 s; public 10 s).

    ``fast``: serve HTTP/1.1 through the fast path of
    :mod:`nbgateway.proxy.fast` when the resource names its channel class
    (``fast_protocol``, with ``fast_route``)
    (default on; ``NBGW_HTTP_FAST=0`` in the environment turns it off)."""

    protocol = StreamingHTTPChannel
    requestFactory = StreamingRequest
    displayTracebacks = False

    def __init__(self, resource: Any, *args: Any, timeout: float | None = DEFAULT_IDLE_TIMEOUT,
                 header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
                 fast: bool | None = None, **kwargs: Any) -> None:
        super().__init__(resource, *args, timeout=timeout, **kwargs)
        self.requestFactory = StreamingRequest
        self.header_timeout = header_timeout
        if fast is None:
            fast = os.environ.get("NBGW_HTTP_FAST", "1") not in ("0", "no", "off", "false")
        self.fast = fast

    def log(self, request: Any) -> None:
        """No combined-log line per request: the gateway emits its own
        structured access log (``nbgateway.observe.accesslog``)."""

    def buildProtocol(self, addr: Any) -> Any:
        fast_protocol = getattr(self.resource, "fast_protocol", None)
        if self.fast and fast_protocol is not None:
            self.protocol = fast_protocol
        else:
            self.protocol = StreamingHTTPChannel
        channel = super().buildProtocol(addr)
        if isinstance(channel, StreamingHTTPChannel):
            channel.header_timeout = self.header_timeout
        return channel
