"""A lean pooled HTTP/1.1 upstream client (the reverse proxy's hot path).

Owns the upstream side of a proxied request: one keep-alive connection pool
per (account, dial mode, verification) with idle connections per target
(scheme, host, port), the request head serialised once as bytes, the
response parsed with ``httptools`` (llhttp), and the response body handed to
an ``IProtocol`` with the connection as its streaming producer.  It is
interface-compatible with the part of ``twisted.web.client.Agent`` the
proxy uses (``request(method, url, headers, body)`` -> a response with
``code``, ``phrase``, ``headers``, ``length`` and ``deliverBody``), so the
proxy's deadline, cancellation and relay logic are unchanged.

Rules:
- every NEW connection is dialed through the injected endpoint factory (the
  account's dialer, so the direct-dial guard or the tunnel decides each one);
- a connection goes back to the pool only after a complete response that
  llhttp says may be kept alive (no ``Connection: close``, not HTTP/1.0
  without keep-alive), a fully sent request body, and not after HEAD (llhttp
  cannot be told a body is absent); a half-read, cancelled, failed or
  stopped exchange closes its connection;
- bounded: at most ``maxPersistentPerHost`` idle connections per target,
  each closed after ``cachedConnectionTimeout`` on the injected clock (the
  idle timeouts share one timer, :mod:`nbgateway.dial.deadlines`, with the
  reverse proxy's request deadlines when the pools are
  :class:`~nbgateway.dial.pool.UpstreamPools`);
- a request that fails on a *reused* connection before any response byte
  (the upstream closed it while idle) is retried once on a new connection
  when its body can be replayed (none, or already buffered bytes);
- the request head (and a buffered body) is sent straight to the socket
  when Twisted has nothing queued for the connection
  (:mod:`nbgateway.dial.sockwrite`, ``NBGW_UPSTREAM_DIRECT_WRITE=0`` off);
- bodies: ``Content-Length`` when the producer knows its length, else
  chunked; 204/304 and 1xx have no body; close-delimited bodies end with
  ``PotentialDataLoss``; a short body fails with ``ResponseFailed``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import httptools
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from nbgateway.dial import sockwrite
from nbgateway.dial.deadlines import Deadlines

log = Logger()

_REPLAYABLE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"PUT", b"TRACE"))
_BODYLESS_STATUSES = (204, 304)
#: bound on response head size (the parser itself is unbounded)
MAX_HEAD_BYTES = 64 * 1024
#: bytes of early response body kept while the consumer is not attached yet
_EARLY_BODY_LIMIT = 256 * 1024
_DONE = Failure(ConnectionDone())
#: response header names as received -> as ``Headers`` keeps them (bounded)
_NAMES: dict[bytes, bytes] = {}
_NAMES_MAX = 4096
#: longer (upstream-chosen) names are not cached: the cache stays small
_NAME_CACHED_MAX_LEN = 64


def _canonical(name: bytes) -> bytes:
    """``name`` as ``Headers`` stores it (twisted's own encoder, cached here:
    the encoder's cache is keyed by the name, so this is one lookup less)."""
    canonical = _NAMES.get(name)
    if canonical is None:
        probe = Headers()
        probe.addRawHeader(name, b"")
        canonical = next(iter(probe.getAllRawHeaders()))[0]
        if len(_NAMES) < _NAMES_MAX and len(name) <= _NAME_CACHED_MAX_LEN:
            _NAMES[name] = canonical
    return canonical


_CONTENT_LENGTH, _TRANSFER_ENCODING = map(_canonical, (b"Content-Length", b"Transfer-Encoding"))


def split_url(url: bytes) -> tuple[bytes, bytes, int, bytes, bytes]:
    """``(scheme, host, port, netloc, path)`` of an absolute http(s) URL."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme not in (b"http", b"https"):
        raise ValueError(f"unsupported upstream URL {url[:80]!r}")
    netloc, slash, path = rest.partition(b"/")
    path = slash + path if slash else b"/"
    if netloc.startswith(b"["):
        close = netloc.find(b"]")
        if close < 0:
            raise ValueError("bad IPv6 literal")
        host, tail = netloc[:close + 1], netloc[close + 1:]
        port_s = tail[1:] if tail.startswith(b":") else b""
    else:
        host, _, port_s = netloc.partition(b":")
    port = int(port_s) if port_s else (443 if scheme == b"https" else 80)
    if not host or not 0 < port < 65536:
        raise ValueError("bad upstream host or port")
    return scheme, host, port, netloc, path


_FRAMING = 2
#: header name as sent -> 0 (copied), 1 (Host) or _FRAMING (dropped: the
#: client's framing headers are replaced by ours); bounded, cleared when full
_HEAD_KINDS: dict[bytes, int] = {}
_HEAD_KINDS_MAX = 1024


def _head_kind(name: bytes) -> int:
    lname = name.lower()
    kind = (1 if lname == b"host" else
            _FRAMING if lname in (b"content-length", b"transfer-encoding", b"connection")
            else 0)
    if len(name) <= 64:
        if len(_HEAD_KINDS) >= _HEAD_KINDS_MAX:
            _HEAD_KINDS.clear()
        _HEAD_KINDS[name] = kind
    return kind


def request_head(method: bytes, path: bytes, headers: Headers, netloc: bytes,
                 length: int | None) -> bytes:
    """The request line and header block, one bytes object.  ``length``:
    None = chunked, -1 = no body."""
    lines = [method, b" ", path, b" HTTP/1.1\r\n"]
    has_host = False
    kinds = _HEAD_KINDS
    for name, values in headers.getAllRawHeaders():
        kind = kinds.get(name)
        if kind is None:
            kind = _head_kind(name)
        if kind:
            if kind == _FRAMING:
                continue  # framing is ours
            has_host = True
        for v in values:
            lines += (name, b": ", v, b"\r\n")
    if not has_host:
        lines += (b"Host: ", netloc, b"\r\n")
    if length is None:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif length >= 0:
        lines.append(b"Content-Length: %d\r\n" % length)
    lines.append(b"\r\n")
    return b"".join(lines)


class _BodyProducer:
    """The response body's producer as seen by the relay (``transport``)."""

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def pauseProducing(self) -> None:
        if self.conn.transport is not None:
            self.conn.paused = True
            self.conn.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.conn.transport is not None:
            self.conn.paused = False
            self.conn.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.conn.abandon()

    abortConnection = stopProducing

    def hold_until_read_end(self, flush: Any) -> bool:
        """While a read is being parsed: ``flush()`` once it is (the relay's
        writes of that read can go out as one); False otherwise."""
        if not self.conn._feeding:
            return False
        self.conn._read_end = flush
        return True


class LeanResponse:
    """The parts of ``IResponse`` the reverse proxy reads."""

    version = (b"HTTP", 1, 1)

    def __init__(self, conn: UpstreamConnection, code: int, phrase: bytes,
                 headers: Headers, length: Any) -> None:
        self._conn = conn
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length

    def deliverBody(self, protocol: Any) -> None:
        self._conn.deliver(protocol)


class _ChunkedWriter:
    """Consumer for a streamed request body of unknown length."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        if data:
            self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class UpstreamConnection(Protocol):
    """One upstream HTTP/1.1 connection; one exchange at a time."""

    #: called once the read being parsed is (``_BodyProducer.hold_until_read_end``)
    _read_end: Any = None

    def __init__(self, pool: ConnectionPool, key: tuple[bytes, bytes, int]) -> None:
        self.pool = pool
        self.key = key
        self.reused = False
        #: the relay paused the socket (slow client)
        self.paused = False
        self._reset()
        self._idle_call: Any = None
        self._lost = False
        self._close_waiters: list[defer.Deferred[None]] = []
        self._feeding = False
        self._release_pending = False
        self._stray = False

    def _reset(self, new_parser: bool = True) -> None:
        if new_parser:
            self._parser: Any = httptools.HttpResponseParser(self)
        #: who gets the response head (``callback``) or the failure (``errback``):
        #: a Deferred, or the request's :class:`_Attempt` itself
        self._d: Any = None
        self._head_method = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._status = 0
        self._phrase = b""
        self._head_done = False
        self._complete = False
        self._framing_eof = False
        self._protocol: Any = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._body_sent = True
        self._body_producer: Any = None
        self._got_bytes = False
        self._reusable = True
        self._active = False

    # -- pool side ------------------------------------------------------------
    def connectionMade(self) -> None:
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:
            with contextlib.suppress(Exception):  # not every transport is a socket
                nodelay(True)

    def send(self, method: bytes, head: bytes, body: Any, d: Any) -> None:
        # The parser is kept: a fresh connection's is unused, and a pooled one
        # only ever ended a complete keep-alive response (llhttp is back at
        # the start of a message; anything else is never pooled).
        self._reset(new_parser=False)
        self._active = True
        self._d = d
        if self.paused:  # the previous relay left the socket paused
            self.paused = False
            self.transport.resumeProducing()
        self._head_method = method == b"HEAD"
        if self._idle_call is not None:
            if self._idle_call.active():
                self._idle_call.cancel()
            self._idle_call = None
        inline = getattr(body, "body", None) if body is not None else None
        # the head (and a buffered body) straight to the socket when Twisted
        # has nothing queued for it: no writability watch, no extra turn
        if body is None:
            sockwrite.write(self.transport, head)
        elif isinstance(inline, bytes):
            sockwrite.write(self.transport, head + inline)
        else:
            self._body_sent = False
            self._body_producer = body
            sockwrite.write(self.transport, head)
            consumer = (self.transport if isinstance(body.length, int)
                        else _ChunkedWriter(self.transport))
            self.transport.registerProducer(body, True)
            bd = body.startProducing(consumer)
            bd.addCallbacks(self._body_done, self._body_failed)

    def _body_done(self, _: Any) -> None:
        if self._lost or not self._active:
            return
        self.transport.unregisterProducer()
        if not isinstance(self._body_producer.length, int):
            self.transport.write(b"0\r\n\r\n")
        self._body_sent = True
        self._body_producer = None
        if self._complete:
            self._finished()

    def _body_failed(self, reason: Failure) -> None:
        self._body_producer = None
        if self._active:
            self._fail(reason)

    def cancel(self) -> None:
        """The caller cancelled the exchange before the response head."""
        self._reusable = False
        self._d = None
        self._stop_body()
        if self.transport is not None:
            self.transport.abortConnection()

    def abandon(self) -> None:
        """The relay stopped reading the body: never reused."""
        self._reusable = False
        self._protocol = None
        self._stop_body()
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()

    def _stop_body(self) -> None:
        producer, self._body_producer = self._body_producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # a finished producer may object
                producer.stopProducing()

    # -- httptools callbacks -------------------------------------------------
    # Every callback first checks for bytes after the end of the response
    # (not active, or complete): the connection is then unusable (_stray).

    def on_status(self, status: bytes) -> None:
        if not self._active or self._complete:  # stray bytes
            self._stray = True
            return
        self._phrase += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._active or self._complete:  # stray bytes
            self._stray = True
            return
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD_BYTES:
            raise ValueError("upstream response head too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if not self._active or self._complete:  # stray bytes
            self._stray = True
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # interim response: wait for the real one
            self._headers = []
            self._phrase = b""
            self._head_size = 0
            return
        self._status = status
        self._head_done = True
        headers = Headers()
        # names made canonical once (cached), values as llhttp gave them:
        # it refuses CR/LF in them; a value with one still goes through
        # addRawHeader (which sanitises it)
        raw = headers._rawHeaders
        length: Any = UNKNOWN_LENGTH
        chunked = False
        for name, value in self._headers:
            key = _NAMES.get(name)
            if key is None:
                key = _canonical(name)
            if b"\r" in value or b"\n" in value:
                headers.addRawHeader(name, value)
            else:
                values = raw.get(key)
                if values is None:
                    raw[key] = [value]
                else:
                    values.append(value)
            if key == _CONTENT_LENGTH:
                length = int(value)
            elif key == _TRANSFER_ENCODING:
                chunked = True
        if self._head_method or status in _BODYLESS_STATUSES:
            length = 0
        elif chunked:
            length = UNKNOWN_LENGTH
        self._framing_eof = (not chunked and length is UNKNOWN_LENGTH)
        d, self._d = self._d, None
        response = LeanResponse(self, status, self._phrase, headers, length)
        if self._head_method:
            # llhttp would wait for a body HEAD never gets: end here, no reuse
            self._reusable = False
            self._complete = True
        if d is not None:
            d.callback(response)

    def on_body(self, data: bytes) -> None:
        if not self._active or self._complete:  # stray bytes
            self._stray = True
            return
        if self._protocol is not None:
            self._protocol.dataReceived(data)
        elif self._active:
            self._early.append(data)
            self._early_size += len(data)
            if self._early_size > _EARLY_BODY_LIMIT and self.transport is not None:
                self.transport.pauseProducing()

    def on_message_complete(self) -> None:
        if not self._active or self._complete:  # stray bytes
            self._stray = True
            return
        if not self._head_done:
            return  # the end of an interim (1xx) response
        self._complete = True
        if not self._parser.should_keep_alive():
            self._reusable = False
        if self._body_sent:
            self._finished()
        else:
            # early response: the rest of the body will not be sent on it
            self._reusable = False
            self._stop_body()
            self._finished()

    # -- transport -----------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if not self._active:
            # bytes on an idle connection: protocol error, never reuse
            self._reusable = False
            self.transport.abortConnection()
            return
        self._got_bytes = True
        if self._head_method and self._head_done:
            return
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # malformed upstream response
            self._feeding = False
            self._end_read()
            self._release_pending = False
            if self._active:
                self._fail(Failure(ResponseFailed([Failure(exc)])))
            elif self.transport is not None and not self._lost:
                self.transport.abortConnection()
            return
        self._feeding = False
        if self._read_end is not None:
            self._end_read()
        if self._release_pending:
            self._release_pending = False
            if self._stray:
                self.transport.abortConnection()
            elif not self._lost:
                self.pool.release(self)
            return
        if self._head_method and self._head_done and self._active:
            self._finished()

    def _end_read(self) -> None:
        flush, self._read_end = self._read_end, None
        if flush is not None:
            flush()

    def deliver(self, protocol: Any) -> None:
        self._protocol = protocol
        protocol.makeConnection(_BodyProducer(self))
        early, self._early = self._early, []
        if self._early_size > _EARLY_BODY_LIMIT and self.transport is not None:
            self.transport.resumeProducing()
        self._early_size = 0
        for chunk in early:
            if self._protocol is None:
                return
            self._protocol.dataReceived(chunk)
        if self._complete and self._active and self._protocol is not None:
            self._finished()

    def _finished(self) -> None:
        if self._protocol is None:
            return  # delivered when deliverBody is called
        protocol, self._protocol = self._protocol, None
        self._active = False
        reuse = self._reusable and not self._lost and not self._stray
        protocol.connectionLost(Failure(ResponseDone()))
        if reuse:
            self.reused = True
            if self._feeding:  # decided after the rest of this read is parsed
                self._release_pending = True
            else:
                self.pool.release(self)
        elif self.transport is not None and not self._lost:
            self.transport.loseConnection()

    def _fail(self, reason: Failure) -> None:
        self._active = False
        self._reusable = False
        self._stop_body()
        d, self._d = self._d, None
        protocol, self._protocol = self._protocol, None
        if d is not None:
            d.errback(reason)
        elif protocol is not None:
            protocol.connectionLost(reason)
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._lost = True
        self.pool.forget(self)
        waiters, self._close_waiters = self._close_waiters, []
        for w in waiters:
            w.callback(None)
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        if not self._active:
            return
        if self._head_done and self._framing_eof and not self._complete:
            # close-delimited body: its end is the connection's end
            self._active = False
            protocol, self._protocol = self._protocol, None
            if protocol is not None:
                protocol.connectionLost(Failure(PotentialDataLoss()))
            else:
                self._active = True  # deliver() finishes it
                self._complete = True
                self._reusable = False
            return
        if self._complete:
            return
        if not self._head_done and self.reused and not self._got_bytes and self._d is not None:
            d, self._d = self._d, None
            self._active = False
            d.errback(Failure(_RetryableLossError(reason)))
            return
        self._fail(Failure(ResponseFailed([reason])))


class _RetryableLossError(Exception):
    """A reused idle connection closed before any response byte."""

    def __init__(self, reason: Failure) -> None:
        super().__init__(str(reason.value))
        self.reason = reason


class ConnectionPool:
    """Idle keep-alive connections per (scheme, host, port); bounded."""

    def __init__(self, clock: Any, max_per_host: int, idle_timeout: float,
                 deadlines: Deadlines | None = None) -> None:
        self.clock = clock
        self.maxPersistentPerHost = max_per_host
        self.cachedConnectionTimeout = idle_timeout
        #: the idle timeouts of pooled connections, on one shared timer (the
        #: caller's, e.g. :class:`~nbgateway.dial.pool.UpstreamPools`', or
        #: this pool's own, whose lingering timer is cancelled when it closes)
        self._own_deadlines = deadlines is None
        self.idle_deadlines = Deadlines(clock) if deadlines is None else deadlines
        self._connections: dict[tuple[bytes, bytes, int], list[UpstreamConnection]] = {}

    def take(self, key: tuple[bytes, bytes, int]) -> UpstreamConnection | None:
        conns = self._connections.get(key)
        while conns:
            conn = conns.pop()
            if not conns:
                del self._connections[key]
            if not conn._lost and conn.transport is not None:
                if conn._idle_call is not None and conn._idle_call.active():
                    conn._idle_call.cancel()
                conn._idle_call = None
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        conns = self._connections.setdefault(conn.key, [])
        if len(conns) >= self.maxPersistentPerHost:
            if not conns:
                del self._connections[conn.key]
            conn.transport.loseConnection()
            return
        conns.append(conn)
        if self.cachedConnectionTimeout > 0:
            conn._idle_call = self.idle_deadlines.add(self.cachedConnectionTimeout,
                                                      functools.partial(self._expire, conn))

    def _expire(self, conn: UpstreamConnection) -> None:
        conn._idle_call = None
        self.forget(conn)
        if conn.transport is not None and not conn._lost:
            conn.transport.loseConnection()

    def forget(self, conn: UpstreamConnection) -> None:
        conns = self._connections.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._connections[conn.key]

    def idle(self) -> int:
        return sum(len(c) for c in self._connections.values())

    def closeCachedConnections(self) -> defer.Deferred[Any]:
        conns = [c for cs in self._connections.values() for c in cs]
        self._connections = {}
        waits = []
        for c in conns:
            if c._idle_call is not None and c._idle_call.active():
                c._idle_call.cancel()
            c._idle_call = None
            if c.transport is not None and not c._lost:
                w: defer.Deferred[None] = defer.Deferred()
                c._close_waiters.append(w)
                waits.append(w)
                c.transport.loseConnection()
        if self._own_deadlines:
            self.idle_deadlines.disarm_idle()
        return defer.gatherResults(waits)


EndpointFor = Callable[[str, int, bool], Any]


class LeanAgent:
    """``request(method, url, headers, body)`` over a :class:`ConnectionPool`,
    dialing new connections with ``endpoint_for(host, port, tls)``."""

    def __init__(self, pool: ConnectionPool, endpoint_for: EndpointFor) -> None:
        self.pool = pool
        self.endpoint_for = endpoint_for

    def request(self, method: bytes, url: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> defer.Deferred[Any]:
        try:
            attempt = self._attempt(method, url, headers, bodyProducer, None)
        except ValueError:
            return defer.fail()
        attempt.start()
        return attempt.result

    def request_into(self, method: bytes, url: bytes, headers: Headers | None,
                     bodyProducer: Any, sink: Any) -> _Attempt:
        """:meth:`request` without a Deferred: ``sink.upstream_response(response)``
        or ``sink.upstream_failed(failure)`` is called exactly once (possibly
        before this returns); the returned attempt's ``cancel()`` ends it with
        ``CancelledError`` unless it was answered already (as cancelling the
        Deferred of :meth:`request` does)."""
        attempt = self._attempt(method, url, headers, bodyProducer, sink)
        attempt.start()
        return attempt

    def _attempt(self, method: bytes, url: bytes, headers: Headers | None,
                 bodyProducer: Any, sink: Any) -> _Attempt:
        scheme, host, port, netloc, path = split_url(url)  # ValueError: a bad URL
        body = bodyProducer
        if body is None:
            length: int | None = 0 if method in (b"POST", b"PUT", b"PATCH") else -1
        else:
            length = body.length if isinstance(body.length, int) else None
        head = request_head(method, path, headers or Headers(), netloc, length)
        key = (scheme, host, port)
        replayable = body is None or isinstance(getattr(body, "body", None), bytes)
        return _Attempt(self, key, method, head, body, replayable, sink)


class _SinkResult:
    """The outcome of a :meth:`LeanAgent.request_into` attempt, delivered
    once to its sink (what the Deferred of :meth:`LeanAgent.request` does,
    without the Deferred and its callback chain)."""

    __slots__ = ("called", "sink")

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.called = False

    def callback(self, response: Any) -> None:
        if not self.called:
            self.called = True
            self.sink.upstream_response(response)

    def errback(self, reason: Failure) -> None:
        if not self.called:
            self.called = True
            self.sink.upstream_failed(reason)


class _Attempt:
    """One request: an idle connection or a new dial, one retry on a reused
    connection the upstream had closed."""

    def __init__(self, agent: LeanAgent, key: tuple[bytes, bytes, int], method: bytes,
                 head: bytes, body: Any, replayable: bool, sink: Any = None) -> None:
        self.agent = agent
        self.key = key
        self.method = method
        self.head = head
        self.body = body
        self.replayable = replayable and method in _REPLAYABLE_METHODS
        #: who gets the outcome: a Deferred (``request``), else the sink itself
        self.result: Any = defer.Deferred(self._cancel) if sink is None else _SinkResult(sink)
        self.conn: UpstreamConnection | None = None
        self.connecting: defer.Deferred[Any] | None = None
        self.cancelled = False

    def start(self) -> None:
        conn = self.agent.pool.take(self.key)
        if conn is not None:
            self._send(conn)
        else:
            self._dial()

    def cancel(self) -> None:
        """End the request (the sink path; a Deferred is cancelled instead)."""
        result = self.result
        if type(result) is _SinkResult and not result.called:
            self._cancel(None)
            result.errback(Failure(defer.CancelledError()))

    def _dial(self) -> None:
        scheme, host, port = self.key
        try:
            endpoint = self.agent.endpoint_for(host.decode("idna").strip("[]"), port,
                                               scheme == b"https")
            factory = Factory.forProtocol(lambda: UpstreamConnection(self.agent.pool, self.key))
            d = self.connecting = endpoint.connect(factory)
        except Exception:  # a refused or invalid dial is the result
            self.result.errback(Failure())
            return
        d.addCallbacks(self._connected, self._dial_failed)

    def _connected(self, conn: UpstreamConnection) -> None:
        self.connecting = None
        if self.cancelled:
            conn.transport.abortConnection()
            return
        self._send(conn)

    def _dial_failed(self, reason: Failure) -> None:
        self.connecting = None
        if not self.cancelled:
            self.result.errback(reason)

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        # the connection reports to this attempt directly (callback/errback),
        # without a Deferred of its own per exchange
        conn.send(self.method, self.head, self.body, self)

    def callback(self, response: Any) -> None:
        """The connection's response head."""
        self._response(response)

    def errback(self, reason: Failure) -> None:
        """The connection's failure before the response head."""
        self._failed(reason)

    def _response(self, response: Any) -> None:
        self.conn = None
        if not self.cancelled:
            self.result.callback(response)

    def _failed(self, reason: Failure) -> None:
        self.conn = None
        if self.cancelled:
            return
        if reason.check(_RetryableLossError):
            if self.replayable:
                self._dial()
                return
            reason = Failure(ResponseFailed([reason.value.reason]))
        self.result.errback(reason)

    def _cancel(self, _: Any) -> None:
        self.cancelled = True
        if self.connecting is not None:
            self.connecting.cancel()
        if self.conn is not None:
            self.conn.cancel()
        # the result Deferred errbacks with CancelledError by itself
