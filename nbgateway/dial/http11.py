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
  each closed after ``cachedConnectionTimeout`` on the injected clock.  A
  connection going back to the pool only records when it went idle; one
  sweep deadline per pool (:mod:`nbgateway.dial.deadlines`, shared with the
  reverse proxy's request deadlines when the pools are
  :class:`~nbgateway.dial.pool.UpstreamPools`) fires when the oldest idle
  connection is due, closes what is due and re-arms for the next one, so a
  request on a pooled connection adds and cancels no timer entry;
- a request that fails on a *reused* connection before any response byte
  (the upstream closed it while idle) is retried once on a new connection
  when its body can be replayed (none, or already buffered bytes);
- the request head (and a buffered body) is sent straight to the socket
  when Twisted has nothing queued for the connection
  (:mod:`nbgateway.dial.sockwrite`, ``NBGW_UPSTREAM_DIRECT_WRITE=0`` off);
- bodies: ``Content-Length`` when the producer knows its length, else
  chunked; 204/304 and 1xx have no body; close-delimited bodies end with
  ``PotentialDataLoss``; a short body fails with ``ResponseFailed``.

This module owns the pool (:class:`ConnectionPool`) and the client
(:class:`LeanAgent`: one attempt per request, a dial or an idle connection,
the one retry); one connection's exchange on the wire is
:mod:`nbgateway.dial.http11_conn`, the request head and URL as bytes
:mod:`nbgateway.dial.http11_wire`.  Their public names (``split_url``,
``request_head``, ``UpstreamConnection``, ``LeanResponse``,
``MAX_HEAD_BYTES``) and the memos (``_NAMES``, ``_HEAD_KINDS``) are
importable from here as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseFailed
from twisted.web.http_headers import Headers

from nbgateway.dial.deadlines import Deadlines
from nbgateway.dial.http11_conn import (  # noqa: F401 (re-exported)
    MAX_HEAD_BYTES,
    LeanResponse,
    UpstreamConnection,
    _RetryableLossError,
)
from nbgateway.dial.http11_wire import (  # noqa: F401 (re-exported)
    _HEAD_KINDS,
    _HEAD_KINDS_MAX,
    _NAMES,
    _canonical,
    request_head,
    split_url,
)

log = Logger()

_REPLAYABLE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"PUT", b"TRACE"))


class ConnectionPool:
    """Idle keep-alive connections per (scheme, host, port); bounded."""

    def __init__(self, clock: Any, max_per_host: int, idle_timeout: float,
                 deadlines: Deadlines | None = None, max_idle: int = 0) -> None:
        self.clock = clock
        self.maxPersistentPerHost = max_per_host
        #: idle connections over all targets at most (0: no bound), and how many there are
        self.max_idle = max_idle
        self._idle = 0
        self.cachedConnectionTimeout = idle_timeout
        #: the idle timeouts of pooled connections, on one shared timer (the
        #: caller's, e.g. :class:`~nbgateway.dial.pool.UpstreamPools`', or
        #: this pool's own, whose lingering timer is cancelled when it closes)
        self._own_deadlines = deadlines is None
        self.idle_deadlines = Deadlines(clock) if deadlines is None else deadlines
        self._connections: dict[tuple[bytes, bytes, int], list[UpstreamConnection]] = {}
        #: the pending idle sweep (a Deadline), None while no sweep is due
        self._sweep: Any = None
        #: dropped by its owner (:class:`~nbgateway.dial.pool.UpstreamPools`
        #: closed the account or itself): an agent kept elsewhere for it is
        #: asked for again (the pools make a new pool)
        self.retired = False

    def take(self, key: tuple[bytes, bytes, int]) -> UpstreamConnection | None:
        # A target's list stays when it empties (the connection taken comes
        # back to it on release: no list made and dropped per request); the
        # idle sweep drops empty ones, so they are bounded by the targets in
        # use since the last sweep.
        conns = self._connections.get(key)
        while conns:
            conn = conns.pop()
            self._idle -= 1
            if not conn._lost and conn.transport is not None:
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        conns = self._connections.get(conn.key)
        if len(conns or ()) >= self.maxPersistentPerHost or (
                self.max_idle and self._idle >= self.max_idle):
            conn.transport.loseConnection()
            return
        if conns is None:
            conns = self._connections[conn.key] = []
        conns.append(conn)
        self._idle += 1
        timeout = self.cachedConnectionTimeout
        if timeout > 0:
            conn.idle_since = self.clock.seconds()
            if self._sweep is None:
                # every connection idle now is due no earlier than this one
                self._sweep = self.idle_deadlines.add(timeout, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close the idle connections that are due; re-arm for the next."""
        self._sweep = None
        now = self.clock.seconds()
        timeout = self.cachedConnectionTimeout
        due: list[UpstreamConnection] = []
        earliest: float | None = None
        for conns in self._connections.values():
            for conn in conns:
                when = conn.idle_since + timeout
                if when <= now:
                    due.append(conn)
                elif earliest is None or when < earliest:
                    earliest = when
        for conn in due:
            self._expire(conn)
        # the targets' lists emptied by take() (kept for the release)
        empty = [key for key, conns in self._connections.items() if not conns]
        for key in empty:
            del self._connections[key]
        if earliest is not None:
            self._sweep = self.idle_deadlines.add(earliest - now, self._sweep_idle)

    def _expire(self, conn: UpstreamConnection) -> None:
        self.forget(conn)
        if conn.transport is not None and not conn._lost:
            conn.transport.loseConnection()

    def forget(self, conn: UpstreamConnection) -> None:
        conns = self._connections.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            self._idle -= 1
            if not conns:
                del self._connections[conn.key]

    def idle(self) -> int:
        return sum(len(c) for c in self._connections.values())

    def closeCachedConnections(self) -> defer.Deferred[Any]:
        conns = [c for cs in self._connections.values() for c in cs]
        self._connections = {}
        self._idle = 0
        waits = []
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for c in conns:
            if c.transport is not None and not c._lost:
                w: defer.Deferred[None] = defer.Deferred()
                if not c._close_waiters:
                    c._close_waiters = []
                c._close_waiters.append(w)  # type: ignore[union-attr]
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
        conn = self.pool.take(attempt.key)  # attempt.start(), inline
        if conn is not None:
            attempt.conn = conn
            conn.send(method, attempt.head, attempt.body, attempt)
        else:
            attempt._dial()
        return attempt

    def send_head(self, method: bytes, key: tuple[bytes, bytes, int], head: bytes,
                  bodyProducer: Any, sink: Any) -> _Attempt:
        """:meth:`request_into` with the request line and header block already
        made (``head``, framing included) for the target ``key`` (``(scheme,
        host, port)`` as :func:`split_url` gives them): no URL to split, no
        ``Headers`` to serialise."""
        body = bodyProducer
        replayable = body is None or isinstance(getattr(body, "body", None), bytes)
        attempt = _Attempt(self, key, method, head, body, replayable, sink)
        conn = self.pool.take(key)  # attempt.start(), inline
        if conn is not None:
            attempt.conn = conn
            conn.send(method, head, body, attempt)
        else:
            attempt._dial()
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


class _ConnectionFactory(Factory):
    """Builds the dial's :class:`UpstreamConnection` without setting its
    ``factory`` (read by nothing: one attribute fewer on the connection,
    which stays under CPython's shared-keys limit)."""

    def __init__(self, pool: ConnectionPool, key: tuple[bytes, bytes, int]) -> None:
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        return UpstreamConnection(self.pool, self.key)


class _Attempt:
    """One request: an idle connection or a new dial, one retry on a reused
    connection the upstream had closed.  Its outcome goes to the result
    Deferred (:meth:`LeanAgent.request`) or, once, to the sink
    (:meth:`LeanAgent.request_into`: ``upstream_response`` or
    ``upstream_failed``, without a Deferred and its callback chain)."""

    # initial state as class attributes (set on the instance when it changes)
    conn: UpstreamConnection | None = None
    connecting: defer.Deferred[Any] | None = None
    #: the request_into sink (None: the result Deferred); whether it was
    #: told, and ``cancelled``, are set in __init__ (read by every request)
    sink: Any = None
    result: Any = None

    def __init__(self, agent: LeanAgent, key: tuple[bytes, bytes, int], method: bytes,
                 head: bytes, body: Any, replayable: bool, sink: Any = None) -> None:
        self.agent = agent
        self.key = key
        self.method = method
        self.head = head
        self.body = body
        self.replayable = replayable and method in _REPLAYABLE_METHODS
        # read by every request: the instance's own from the start (CPython
        # 3.11 does not specialise reading a class attribute via an instance)
        self.cancelled = False
        self.told = False
        if sink is None:
            self.result = defer.Deferred(self._cancel)
        else:
            self.sink = sink

    def _ok(self, response: Any) -> None:
        sink = self.sink
        if sink is None:
            self.result.callback(response)
        elif not self.told:
            self.told = True
            sink.upstream_response(response)

    def _error(self, reason: Failure) -> None:
        sink = self.sink
        if sink is None:
            self.result.errback(reason)
        elif not self.told:
            self.told = True
            sink.upstream_failed(reason)

    def start(self) -> None:
        conn = self.agent.pool.take(self.key)
        if conn is not None:
            self.conn = conn  # _send, inline
            conn.send(self.method, self.head, self.body, self)
        else:
            self._dial()

    def cancel(self) -> None:
        """End the request (the sink path; a Deferred is cancelled instead)."""
        if self.sink is not None and not self.told:
            self._cancel(None)
            self._error(Failure(defer.CancelledError()))

    def _dial(self) -> None:
        scheme, host, port = self.key
        try:
            endpoint = self.agent.endpoint_for(host.decode("idna").strip("[]"), port,
                                               scheme == b"https")
            d = self.connecting = endpoint.connect(_ConnectionFactory(self.agent.pool, self.key))
        except Exception:  # a refused or invalid dial is the result
            self._error(Failure())
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
            self._error(reason)

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        # the connection reports to this attempt directly (callback/errback),
        # without a Deferred of its own per exchange
        conn.send(self.method, self.head, self.body, self)

    def callback(self, response: Any) -> None:
        """The connection's response head (``_response``, ``_ok``, inline)."""
        self.conn = None
        if self.cancelled:
            return
        sink = self.sink
        if sink is None:
            self.result.callback(response)
        elif not self.told:
            self.told = True
            sink.upstream_response(response)

    def errback(self, reason: Failure) -> None:
        """The connection's failure before the response head."""
        self._failed(reason)

    def _response(self, response: Any) -> None:
        self.conn = None
        if not self.cancelled:
            self._ok(response)

    def _failed(self, reason: Failure) -> None:
        self.conn = None
        if self.cancelled:
            return
        if reason.check(_RetryableLossError):
            if self.replayable:
                self._dial()
                return
            reason = Failure(ResponseFailed([reason.value.reason]))
        self._error(reason)

    def _cancel(self, _: Any) -> None:
        self.cancelled = True
        if self.connecting is not None:
            self.connecting.cancel()
        if self.conn is not None:
            self.conn.cancel()
        # the result Deferred errbacks with CancelledError by itself
