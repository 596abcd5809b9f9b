"""The lean route of an HTTP/2 request stream: the requests the HTTP/1.1 fast
path would serve, without twisted.web's ``Request`` path.

On :class:`~nbgateway.proxy.h2trailers.TrailersH2Connection`, a stream whose
HEADERS end it (a ``GET`` or ``HEAD`` without a body), with an origin-form
``:path``, no ``content-length`` or ``expect`` field, on a site whose resource
the HTTP/1.1 fast path serves (``fast_protocol`` and ``fast_route``, the
site's ``fast`` switch on) and whose ``fast_route(host)`` takes the host, gets
a :class:`LeanH2Stream` and a :class:`LeanH2Request` instead of Twisted's
``H2Stream`` and ``server.Request``:

- the request head goes from the received fields into the request's
  ``Headers`` in one loop (the same dict as
  :class:`~nbgateway.proxy.h2_stream.GatewayH2Stream` makes: canonical names,
  ``:authority`` as ``Host``, values in arrival order);
- the request is :class:`~nbgateway.proxy.request_base.LeanRequest` (shared
  with the HTTP/1.1 fast path's ``FastRequest``): the subset of
  ``server.Request`` the gateway's resource, proxy, error pages and access
  log use, dispatched straight to the site's resource when the
  stream's end is processed (where Twisted's ``requestComplete`` calls
  ``Request.process``): no resource traversal, no ``prepath``/``postpath``,
  no ``Deferred`` per stream for its cleanup;
- the response goes to the stream as Twisted's ``Request.write`` sends it
  (``Server``, ``Date``, the default ``Content-Type``, nothing after the
  head of a HEAD/204/304 response, ``:status`` first, the same header list
  in the same order), through the connection's own ``send_headers``,
  ``writeDataToStream`` and ``endRequest`` (flow control, priority,
  trailers, the send loop: the connection's); the HEADERS frame of a
  response whose first write carries data goes out with that data at the
  end of the turn instead of in a transport write of its own;
- producers (the upstream body's transport) are paused and resumed by the
  stream's flow-control window as on Twisted's ``H2Stream``; a stream reset
  or a lost connection reaches the request's ``connectionLost`` (observers,
  ``notifyFinish``), and ``abortConnection`` resets the stream.

Everything else (bodies, gRPC, other methods, login flows, a site without the
fast path) keeps Twisted's stream and twisted.web's ``Request``.
"""

from __future__ import annotations

from typing import Any

from h2.exceptions import StreamClosedError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web._http2 import _PullToPush
from twisted.web.http_headers import Headers, _nameEncoder

from nbgateway.proxy.request_base import LeanRequest

log = Logger(namespace="nbgateway.proxy.h2")

#: ``Headers``' name encoder: its cache of canonical names and the encoder
_CANONICAL: dict[Any, bytes] = _nameEncoder._canonicalHeaderCache
_encode_name = _nameEncoder.encode
_new_headers = Headers.__new__
_NOT_DONE_YET = server.NOT_DONE_YET
_NO_BODY_CODES = http.NO_BODY_CODES
_CONTENT_TYPE, _CONTENT_LENGTH = (_encode_name(n) for n in (b"content-type", b"content-length"))
#: the methods the lean route serves (Twisted gives them a known empty body)
LEAN_METHODS = frozenset((b"GET", b"HEAD"))
#: request fields that send a stream down Twisted's route
_DECLINE = frozenset((b"content-length", b"expect"))
_STATUS = {code: b"%d" % code for code in range(100, 600)}
#: received regular field names that need no more than their ``Headers``
#: name (not declined, not ``host``, without ``_``) -> that name; at most
#: :data:`_PLAIN_NAMES` names of at most :data:`_PLAIN_NAME_LEN` bytes
#: (cleared when full): a browser sends the same ~15 on every request
_PLAIN: dict[bytes, bytes] = {}
_PLAIN_NAMES = 1024
_PLAIN_NAME_LEN = 64


class LeanH2Request(LeanRequest):
    """A request served on the lean route: the part of twisted.web's
    ``server.Request`` the gateway's resource, proxy, error pages and access
    log use (:class:`~nbgateway.proxy.request_base.LeanRequest`, which
    :class:`~nbgateway.proxy.fast_request.FastRequest` shares), with the
    response written to its HTTP/2 stream (``channel``) as twisted.web's
    ``Request`` writes it there."""

    clientproto = b"HTTP/2"
    _log_failure = staticmethod(log.failure)
    _route = "h2 lean route"
    __slots__ = ()

    # -- what resources read -------------------------------------------------
    def getHeader(self, key: bytes) -> bytes | None:
        values = self.requestHeaders._rawHeaders.get(_CANONICAL.get(key) or _encode_name(key))
        return values[-1] if values else None

    # -- the response --------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("Request.write called on a request after Request.finish")
        if self._disconnected or self._bodiless:
            return
        stream = self.channel
        if not self.startedWriting:
            self.startedWriting = True
            raw = self.responseHeaders._rawHeaders
            code = self.code
            if (code not in _NO_BODY_CODES and self.defaultContentType is not None
                    and _CONTENT_TYPE not in raw):
                length = raw.get(_CONTENT_LENGTH)
                if not (length and length[0] == b"0"):
                    raw[_CONTENT_TYPE] = [self.defaultContentType]
            # twisted.web's list for H2Stream.writeHeaders, :status first
            block = [(b":status", _STATUS.get(code) or b"%d" % code)]
            for name, values in raw.items():
                if len(values) == 1:
                    block.append((name, values[0]))
                else:
                    for value in values:
                        block.append((name, value))
            bodiless = self.method == b"HEAD" or code in _NO_BODY_CODES
            stream.send_head(block, not bodiless and bool(data))  # type: ignore[union-attr]
            if bodiless:
                self._bodiless = True  # what follows is dropped
                return
        self.sentLength += len(data)
        if data:
            stream._conn.writeDataToStream(stream.streamID, data)  # type: ignore[union-attr]

    def finish(self) -> None:
        if self._disconnected:
            raise RuntimeError("Request.finish called on a request after its "
                               "connection was lost")
        if self.finished:
            return
        if not self.startedWriting:
            self.write(b"")
        self.finished = True
        if self.producer is not None:
            log.failure("", Failure(RuntimeError(
                f"Producer was not unregistered for {self.uri!r}")))
            self.unregisterProducer()
        stream = self.channel
        self.channel = None
        if stream is not None:
            stream._conn.endRequest(stream.streamID)
        self._ended()

    def _abort(self, channel: Any) -> None:
        channel.abortConnection()


class LeanH2Stream:
    """One lean-route stream: what the connection calls on a stream
    (``connectionLost``, ``windowUpdated``, ``flowControlBlocked``,
    ``requestComplete``) and the request's channel (producer registration,
    ``abortConnection``, addresses), as Twisted's ``H2Stream``."""

    __slots__ = ("_conn", "_producerProducing", "_request", "hasStreamingProducer",
                 "persistent", "producer", "producing", "streamID", "transport")

    def __init__(self, stream_id: int, conn: Any) -> None:
        self.streamID = stream_id
        self._conn = conn
        #: as on Twisted's ``H2Stream``: an HTTP/2 stream has no transport (a
        #: slot: the request's ``__init__`` reads it, specialised)
        self.transport = None
        self._request: LeanH2Request | None = None
        self.producer: Any = None
        self._producerProducing = False
        self.hasStreamingProducer: bool | None = None
        self.producing = True
        self.persistent = True

    # -- called by the connection ----------------------------------------------
    def requestComplete(self) -> None:
        """The stream's end (with its HEADERS): the request goes to the
        site's resource now, where Twisted's stream calls ``process``."""
        req = self._request
        if req is None or req.finished or req._disconnected:
            return
        try:
            body = self._conn.site.resource.render(req)
        except Exception:
            req.processing_failed(Failure())
            return
        if (body is not _NOT_DONE_YET and isinstance(body, bytes) and not req.finished
                and not req._disconnected):
            req.setHeader(b"content-length", b"%d" % len(body))
            req.write(body)
            req.finish()

    def receiveDataChunk(self, data: bytes, flowControlledLength: int) -> None:
        # h2 refuses DATA after END_STREAM: never called; the window is
        # given back if it ever is
        self._conn.openStreamWindow(self.streamID, flowControlledLength)

    def connectionLost(self, reason: Failure) -> None:
        req = self._request
        if req is not None and not req._disconnected:
            req.connectionLost(reason)

    def windowUpdated(self) -> None:
        if not self.producer or self._producerProducing:
            return
        if not self._conn.remainingOutboundWindow(self.streamID) > 0:
            return
        self._producerProducing = True
        self.producer.resumeProducing()

    def flowControlBlocked(self) -> None:
        if not self.producer:
            return
        if self._producerProducing:
            self.producer.pauseProducing()
            self._producerProducing = False

    # -- called by the request (its channel) ------------------------------------
    def send_head(self, block: list[tuple[bytes, bytes]], data_follows: bool) -> None:
        """The response's HEADERS (Twisted's ``H2Connection.writeHeaders``):
        written now, or with the first DATA frame at the end of the turn
        when ``data_follows``."""
        conn = self._conn
        state = conn.conn
        try:
            state.send_response_head(self.streamID, block)
        except StreamClosedError:
            return  # the client closed the stream: as Twisted, nothing to do
        # (the DATA wakes the send loop only when the window is open)
        if not data_follows or state.local_flow_control_window(self.streamID) <= 0:
            conn._tryToWriteControlData()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer:
            raise ValueError(f"registering producer {producer} before previous one "
                             f"({self.producer}) was unregistered")
        if not streaming:
            self.hasStreamingProducer = False
            producer = _PullToPush(producer, self)
            producer.startStreaming()
        else:
            self.hasStreamingProducer = True
        self.producer = producer
        self._producerProducing = True

    def unregisterProducer(self) -> None:
        if self.producer is not None and not self.hasStreamingProducer:
            self.producer.stopStreaming()
        self._producerProducing = False
        self.producer = None
        self.hasStreamingProducer = None

    def write(self, data: bytes) -> None:
        self._conn.writeDataToStream(self.streamID, data)

    def writeSequence(self, iovec: Any) -> None:
        for chunk in iovec:
            self.write(chunk)

    def requestDone(self, request: Any) -> None:
        self._conn.endRequest(self.streamID)

    def loseConnection(self) -> None:
        self._conn.endRequest(self.streamID)

    def abortConnection(self) -> None:
        """Reset the stream (RST_STREAM)."""
        self._conn.abortRequest(self.streamID)

    def getPeer(self) -> Any:
        return self._conn.getPeer()

    def getHost(self) -> Any:
        return self._conn.getHost()

    def isSecure(self) -> bool:
        return self._conn._isSecure()

    def stopProducing(self) -> None:
        self.producing = False
        self.abortConnection()

    def pauseProducing(self) -> None:
        self.producing = False

    def resumeProducing(self) -> None:
        self.producing = True


def lean_stream(conn: Any, event: Any, info: tuple[Any, ...]) -> LeanH2Stream | None:
    """The lean route's stream for a received request (``h2``'s
    ``RequestReceived``, its fields checked), or None: the stream takes
    Twisted's route.  ``info`` is the connection's tuple (peer, peer host
    text, local address, TLS?, clock, the site resource's ``fast_route``)."""
    raw: dict[bytes, list[bytes]] = {}
    method = path = host = None
    underscore = False
    plain = _PLAIN
    for name, value in event.headers:
        key = plain.get(name)
        if key is not None:  # a regular name seen before: nothing else to note
            pass
        elif name[0] == 0x3A:  # ":" (h2 refused empty names)
            if name == b":method":
                method = value
                continue
            if name == b":path":
                path = value
                continue
            if name != b":authority":
                continue
            key = b"Host"
            host = value
        else:
            if name in _DECLINE:
                return None
            key = _CANONICAL.get(name) or _encode_name(name)
            if name == b"host":
                host = value
            elif 0x5F in name:  # "_"
                underscore = True
            elif len(name) <= _PLAIN_NAME_LEN:
                if len(plain) >= _PLAIN_NAMES:
                    plain.clear()
                plain[name] = key
        values = raw.get(key)
        if values is None:
            raw[key] = [value]
        else:
            values.append(value)
    if method not in LEAN_METHODS or path is None or path[:1] != b"/":
        return None
    route = info[5](host or b"")
    if not route:
        return None
    stream = LeanH2Stream(event.stream_id, conn)
    headers = _new_headers(Headers)
    headers._rawHeaders = raw
    stream._request = LeanH2Request(stream, method, path, headers, False, underscore, info,
                                    route)
    return stream
