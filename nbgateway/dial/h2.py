"""The upstream HTTP/2 client: h2c (prior knowledge) and ALPN ``h2`` over TLS.

Used for targets whose ``nbgw_upstream_protocol`` is ``h2`` (gRPC services).
Owns:

- :class:`H2ClientProtocol`: one HTTP/2 connection (the ``h2`` package, a
  sans-IO state machine fed the bytes the transport reads).  Many streams;
  outgoing request bodies are sent as the peer's flow-control windows allow
  and the body producer is paused while they are full; received DATA is
  acknowledged (window re-opened) only while the stream's reader is not
  paused, so a slow client stops the upstream after one window instead of
  the gateway buffering the body.  Response trailers (``grpc-status``,
  ``grpc-message``, custom trailing metadata) are handed to the reader.
  ``GOAWAY``: no new streams; the connection closes when its last stream is
  done.  TLS: the connection is usable only after the handshake negotiated
  ALPN ``h2`` (else it is refused with :class:`H2NotNegotiatedError`), within the
  dial timeout.
- :class:`H2Pools`: connections pooled per (account, dial mode, TLS
  verification, scheme, host, port), never shared across accounts; a new
  connection is made through the account's dialer (tunnel, or the guarded
  direct dialer, so the ``--direct-upstream-allow`` guard applies to every
  connection); a request waits for a free stream when every connection is at
  the peer's ``MAX_CONCURRENT_STREAMS`` and no more connections may be
  opened; idle connections close after ``idle_timeout``.
- :class:`H2Stream`: one request/response exchange as the reverse proxy
  drives it: ``response`` fires with ``(status, headers)``; the body and the
  trailers go to a :class:`IStreamReader`-like sink; ``cancel()`` sends
  ``RST_STREAM(CANCEL)``.

This module owns the pools; the connection is :mod:`nbgateway.dial.h2_conn`,
the stream and the errors :mod:`nbgateway.dial.h2_stream`.  Their names
(``H2ClientProtocol``, ``H2Stream``, the errors, ``STREAM_WINDOW``,
``CONNECTION_WINDOW``, ``BODY_HIGH_WATER``, ``Header``) are importable from
here as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from nbgateway.dial.h2_conn import (  # noqa: F401 (re-exported)
    CONNECTION_WINDOW,
    STREAM_WINDOW,
    H2ClientProtocol,
)
from nbgateway.dial.h2_stream import (  # noqa: F401 (re-exported)
    BODY_HIGH_WATER,
    H2NotNegotiatedError,
    H2Stream,
    H2StreamResetError,
    H2UpstreamError,
    Header,
)

TLSCreator = Callable[..., Any]

DEFAULT_IDLE_TIMEOUT = 90.0
DEFAULT_MAX_CONNECTIONS = 8
#: bound on queued requests waiting for a stream, per host
MAX_WAITERS = 1024


class _Host:
    """The pooled connections to one (account, mode, verification, scheme,
    host, port)."""

    def __init__(self) -> None:
        self.conns: list[H2ClientProtocol] = []
        self.dialing = 0
        self.waiters: deque[defer.Deferred[H2ClientProtocol]] = deque()
        self.idle_timers: dict[int, Any] = {}
        #: (dialer, skip_verify, tls, host, port, timeout) of the latest request
        self.dial_args: tuple[Any, ...] = ()


class H2Pools:
    """HTTP/2 connection pools (see the module docstring).

    ``tls_creator(hostname, skip_verify, alpn)`` returns the client TLS
    connection creator (verification as for HTTP/1.1 targets; ``alpn`` is
    ``(b"h2",)`` here)."""

    def __init__(self, reactor: Any, *, tls_creator: TLSCreator | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, clock: Any = None) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.tls_creator = tls_creator
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._hosts: dict[tuple[Any, ...], _Host] = {}
        self.dials = 0  # connections made (tests, metrics)
        self.dial_failures = 0
        self.streams = 0  # streams opened through connection() (metrics)

    def connection(self, account_id: str, dialer: Any, *, direct: bool, skip_verify: bool,
                   tls: bool, host: str, port: int,
                   timeout: float) -> defer.Deferred[H2ClientProtocol]:
        """A connection with a free stream (pooled, or dialed now through
        ``dialer``).  Cancelling the Deferred gives up the wait."""
        key = (account_id, direct, skip_verify, tls, host, port)
        entry = self._hosts.get(key)
        if entry is None:
            entry = self._hosts[key] = _Host()
        for conn in entry.conns:
            if conn.available:
                self._not_idle(entry, conn)
                self.streams += 1
                return defer.succeed(conn)
        if len(entry.waiters) >= MAX_WAITERS:
            return defer.fail(H2UpstreamError("too many requests waiting for the upstream"))

        def cancel(d: defer.Deferred[Any]) -> None:
            if d in entry.waiters:
                entry.waiters.remove(d)

        d: defer.Deferred[H2ClientProtocol] = defer.Deferred(cancel)
        entry.waiters.append(d)
        entry.dial_args = (dialer, skip_verify, tls, host, port, timeout)
        self._maybe_dial(key, entry)
        return d

    def _maybe_dial(self, key: tuple[Any, ...], entry: _Host) -> None:
        """Dial one more connection for waiting requests, if allowed (one
        dial at a time per host: its streams serve every waiter)."""
        if (entry.waiters and entry.dialing == 0 and entry.dial_args
                and len(entry.conns) < self.max_connections):
            self._dial(key, entry, *entry.dial_args)

    def _dial(self, key: tuple[Any, ...], entry: _Host, dialer: Any, skip_verify: bool,
              tls: bool, host: str, port: int, timeout: float) -> None:
        entry.dialing += 1
        self.dials += 1
        try:
            host = host.strip("[]")
            ep = dialer.endpoint(host, port, timeout)
            if tls:
                if self.tls_creator is None:
                    raise ValueError("https target but no client TLS policy configured")
                ep = wrapClientTLS(self.tls_creator(host, skip_verify, (b"h2",)), ep)
            proto = H2ClientProtocol(self.clock, tls=tls, handshake_timeout=timeout or 30.0)
            d = ep.connect(Factory.forProtocol(lambda: proto))
            d.addCallback(lambda p: p.ready)
        except Exception:  # a refused/broken endpoint fails the waiters
            d = defer.fail()

        def connected(conn: H2ClientProtocol) -> None:
            entry.dialing -= 1
            conn.on_stream_closed = lambda c: self._stream_closed(key, entry, c)
            conn.on_lost = lambda c: self._lost(key, entry, c)
            if not conn.lost:
                entry.conns.append(conn)
            # serves the waiters, dials again if needed, and arms the idle
            # close when nobody used it (its waiter gave up meanwhile)
            self._stream_closed(key, entry, conn)

        def failed(f: Failure) -> None:
            entry.dialing -= 1
            self.dial_failures += 1
            waiters, entry.waiters = list(entry.waiters), deque()
            for w in waiters:
                w.errback(f)
            if not entry.conns and not entry.dialing:
                self._hosts.pop(key, None)

        d.addCallbacks(connected, failed)

    def _serve(self, entry: _Host) -> None:
        while entry.waiters:
            conn = next((c for c in entry.conns if c.available), None)
            if conn is None:
                return
            self._not_idle(entry, conn)
            self.streams += 1
            entry.waiters.popleft().callback(conn)
            # the waiter opened its stream synchronously (or gave up)

    def _stream_closed(self, key: tuple[Any, ...], entry: _Host, conn: H2ClientProtocol) -> None:
        self._serve(entry)
        self._maybe_dial(key, entry)
        if (not conn.streams and not conn.lost and conn in entry.conns
                and self.idle_timeout > 0 and id(conn) not in entry.idle_timers):
            entry.idle_timers[id(conn)] = self.clock.callLater(
                    self.idle_timeout, self._idle_close, entry, conn)

    def _not_idle(self, entry: _Host, conn: H2ClientProtocol) -> None:
        timer = entry.idle_timers.pop(id(conn), None)
        if timer is not None and timer.active():
            timer.cancel()

    def _idle_close(self, entry: _Host, conn: H2ClientProtocol) -> None:
        entry.idle_timers.pop(id(conn), None)
        if not conn.streams and conn.transport is not None:
            conn.usable = False
            conn.h2.close_connection()
            conn._send()
            conn.transport.loseConnection()

    def _lost(self, key: tuple[Any, ...], entry: _Host, conn: H2ClientProtocol) -> None:
        self._not_idle(entry, conn)
        if conn in entry.conns:
            entry.conns.remove(conn)
        self._maybe_dial(key, entry)
        if (not entry.conns and not entry.dialing and not entry.waiters
                and self._hosts.get(key) is entry):
            del self._hosts[key]

    def waiting(self) -> int:
        """Requests waiting for a connection or a free stream."""
        return sum(len(e.waiters) for e in self._hosts.values())

    def active_streams(self) -> int:
        return sum(len(c.streams) for e in self._hosts.values() for c in e.conns)

    def open_connections(self, account_id: str | None = None) -> int:
        return sum(len(e.conns) for k, e in self._hosts.items()
                   if account_id is None or k[0] == account_id)

    def close_account(self, account_id: str) -> None:
        """Close an account's connections (its tunnel went away)."""
        for key in [k for k in self._hosts if k[0] == account_id]:
            self._close(self._hosts.pop(key))

    def close(self) -> None:
        hosts, self._hosts = list(self._hosts.values()), {}
        for entry in hosts:
            self._close(entry)

    def _close(self, entry: _Host) -> None:
        for timer in entry.idle_timers.values():
            if timer.active():
                timer.cancel()
        entry.idle_timers.clear()
        for conn in list(entry.conns):
            if conn.transport is not None:
                conn.transport.abortConnection()
        for w in list(entry.waiters):
            w.cancel()
