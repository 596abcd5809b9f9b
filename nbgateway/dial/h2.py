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
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from twisted.internet import defer
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbgateway.dial import UpstreamError

log = Logger()

Header = tuple[bytes, bytes]
TLSCreator = Callable[..., Any]

#: per-stream receive window we announce (bytes buffered at most per paused stream)
STREAM_WINDOW = 256 * 1024
#: connection receive window (all streams together)
CONNECTION_WINDOW = 4 * 1024 * 1024
#: pause a request body producer when this much is waiting for window
BODY_HIGH_WATER = 256 * 1024
DEFAULT_IDLE_TIMEOUT = 90.0
DEFAULT_MAX_CONNECTIONS = 8
#: bound on queued requests waiting for a stream, per host
MAX_WAITERS = 1024


class H2UpstreamError(UpstreamError):
    """The HTTP/2 upstream failed a stream or the connection."""


class H2NotNegotiatedError(H2UpstreamError):
    """A TLS upstream did not choose ``h2`` by ALPN."""


class H2StreamResetError(H2UpstreamError):
    """The upstream reset the stream (``RST_STREAM``) or went away."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class H2Stream:
    """One request on an :class:`H2ClientProtocol`.

    ``response`` fires with ``(status, headers)`` once the final response
    head arrived (or fails).  Then :meth:`read` attaches a sink with
    ``data(bytes)``, ``trailers(list[Header])``, ``ended()`` and
    ``failed(Failure)``; what arrived before is delivered at once.
    :meth:`pause`/:meth:`resume` hold/re-open the receive window."""

    def __init__(self, conn: H2ClientProtocol, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.response: defer.Deferred[tuple[int, list[Header]]] = defer.Deferred(
            lambda _d: self.cancel())
        self.status = 0
        self.headers: list[Header] = []
        self.trailers: list[Header] = []
        self.closed = False
        self._sink: Any = None
        self._early: list[tuple[str, Any]] = []
        self._paused = False
        self._unacked = 0
        # request body
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._body: Any = None
        self._body_paused = False
        self._body_done = False
        self._end_sent = False
        self.sent = 0  # request body bytes sent (progress for deadlines)
        self.received = 0

    # -- reader side -------------------------------------------------------
    def read(self, sink: Any) -> None:
        self._sink = sink
        early, self._early = self._early, []
        for kind, arg in early:
            self._emit(kind, arg)
        if not self._paused:
            self._give_back()

    def _emit(self, kind: str, arg: Any = None) -> None:
        if self._sink is None:
            self._early.append((kind, arg))
            return
        if kind == "data":
            self._sink.data(arg)
        elif kind == "trailers":
            self._sink.trailers(arg)
        elif kind == "ended":
            self._sink.ended()
        else:
            self._sink.failed(arg)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._give_back()

    def _give_back(self) -> None:
        """Acknowledge what was held (a closed stream: the connection window)."""
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self.conn.acknowledge(self.stream_id, n)

    def cancel(self) -> None:
        """Abandon the exchange: ``RST_STREAM(CANCEL)`` unless already closed."""
        if self.closed:
            return
        self._stop_body()
        self.conn.reset(self, h2.errors.ErrorCodes.CANCEL)

    # -- writer side (IConsumer for the request body) ----------------------
    def send_body(self, producer: Any) -> None:
        self._body = producer
        d = defer.maybeDeferred(producer.startProducing, self)
        d.addCallbacks(self._body_finished, self._body_failed)

    def write(self, data: bytes) -> None:
        if self.closed or self._body_done or not data:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        self.conn.flush_stream(self)
        if self._out_bytes > BODY_HIGH_WATER and not self._body_paused and self._body:
            self._body_paused = True
            self._body.pauseProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def _body_finished(self, _: Any) -> None:
        self._body_done = True
        self._body = None
        self.conn.flush_stream(self)

    def _body_failed(self, failure: Failure) -> None:
        self._body = None
        if not self.closed:
            log.debug("request body failed: {e}", e=str(failure.value))
            self.conn.reset(self, h2.errors.ErrorCodes.CANCEL)

    def _stop_body(self) -> None:
        body, self._body = self._body, None
        self._out.clear()
        self._out_bytes = 0
        if body is not None:
            with contextlib.suppress(Exception):  # it may already be done
                body.stopProducing()

    def _drained(self) -> None:
        """Called by the connection after sending what the window allowed."""
        if self._body_paused and self._out_bytes <= BODY_HIGH_WATER // 4:
            self._body_paused = False
            if self._body is not None:
                self._body.resumeProducing()

    # -- events from the connection ----------------------------------------
    def _on_head(self, status: int, headers: list[Header]) -> None:
        self.status = status
        self.headers = headers
        if not self.response.called:
            self.response.callback((status, headers))

    def _on_data(self, data: bytes, flow_len: int) -> None:
        self.received += len(data)
        if self._paused or self._sink is None:  # held until a reader takes it
            self._unacked += flow_len
        elif flow_len:
            self.conn.acknowledge(self.stream_id, flow_len)
        if data:
            self._emit("data", data)

    def _on_trailers(self, trailers: list[Header]) -> None:
        self.trailers = trailers
        self._emit("trailers", trailers)

    def _on_end(self) -> None:
        self.closed = True
        self._stop_body()
        self._give_back()
        if not self.response.called:
            self.response.errback(H2UpstreamError("stream ended without a response"))
            return
        self._emit("ended")

    def _on_error(self, exc: Exception) -> None:
        self.closed = True
        self._stop_body()
        self._give_back()
        if not self.response.called:
            self.response.errback(exc)
            return
        self._emit("failed", Failure(exc))


@implementer(IHandshakeListener)
class H2ClientProtocol(Protocol):
    """One client HTTP/2 connection (see the module docstring)."""

    def __init__(self, clock: Any, *, tls: bool, handshake_timeout: float = 30.0) -> None:
        self.clock = clock
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.on_stream_closed: Callable[[H2ClientProtocol], None] | None = None
        self.on_lost: Callable[[H2ClientProtocol], None] | None = None
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config=config)
        self.streams: dict[int, H2Stream] = {}
        self.ready: defer.Deferred[H2ClientProtocol] = defer.Deferred()
        self.usable = False
        self.goaway = False
        self.lost = False
        self._handshake_timer: Any = None

    # -- connection lifecycle ----------------------------------------------
    def connectionMade(self) -> None:
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:  # HEADERS, DATA, trailers are small separate writes
            with contextlib.suppress(Exception):
                nodelay(True)
        if self.tls:
            self._handshake_timer = self.clock.callLater(self.handshake_timeout,
                                                         self._handshake_timed_out)
        else:
            self._start()

    def handshakeCompleted(self) -> None:
        self._cancel_handshake_timer()
        proto = getattr(self.transport, "negotiatedProtocol", None)
        if proto != b"h2":
            self._fail_ready(H2NotNegotiatedError(f"upstream TLS ALPN chose {proto!r}, not h2"))
            self.transport.abortConnection()
            return
        self._start()

    def _start(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                                 h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._send()
        self.usable = True
        if not self.ready.called:
            self.ready.callback(self)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self._fail_ready(H2UpstreamError("upstream TLS handshake timed out"))
        self.transport.abortConnection()

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def _fail_ready(self, exc: Exception) -> None:
        self.usable = False
        if not self.ready.called:
            self.ready.errback(exc)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        self.usable = False
        self._cancel_handshake_timer()
        self._fail_ready(H2UpstreamError(f"upstream connection lost: {reason.value}"))
        streams, self.streams = list(self.streams.values()), {}
        for st in streams:
            st._on_error(H2StreamResetError(f"upstream connection lost: {reason.value}"))
        if self.on_lost is not None:
            self.on_lost(self)

    @property
    def available(self) -> bool:
        """Can a new stream be opened here now?"""
        if not self.usable or self.goaway or self.lost:
            return False
        limit = self.h2.remote_settings.max_concurrent_streams
        return self.h2.open_outbound_streams < min(limit, 1000)

    # -- requests ------------------------------------------------------------
    def request(self, headers: list[Header], body: Any) -> H2Stream:
        """Open a stream with ``headers`` (pseudo-headers first) and the
        ``IBodyProducer`` ``body`` (None: no body)."""
        stream_id = self.h2.get_next_available_stream_id()
        st = H2Stream(self, stream_id)
        self.h2.send_headers(stream_id, headers, end_stream=body is None)
        self.streams[stream_id] = st
        if body is None:
            st._body_done = st._end_sent = True
        elif not self.lost:
            # HEADERS and what the body has ready (often all of it) in one write
            self._corked = True
            try:
                st.send_body(body)
            finally:
                self._corked = False
        self._send()
        return st

    def flush_stream(self, st: H2Stream) -> None:
        if st.closed or self.lost:
            return
        try:
            while st._out:
                window = self.h2.local_flow_control_window(st.stream_id)
                n = min(window, self.h2.max_outbound_frame_size, len(st._out[0]))
                if n <= 0:
                    break
                chunk = st._out[0]
                self.h2.send_data(st.stream_id, chunk[:n])
                if n < len(chunk):
                    st._out[0] = chunk[n:]
                else:
                    st._out.popleft()
                st._out_bytes -= n
                st.sent += n
            if not st._out and st._body_done and not st._end_sent:
                st._end_sent = True
                self.h2.end_stream(st.stream_id)
        except h2.exceptions.StreamClosedError:
            st._out.clear()
            st._out_bytes = 0
        self._send()
        st._drained()

    def acknowledge(self, stream_id: int, n: int) -> None:
        if self.lost:
            return
        self.h2.acknowledge_received_data(n, stream_id)
        self._send()

    def reset(self, st: H2Stream, code: int) -> None:
        if st.stream_id in self.streams and not self.lost:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.reset_stream(st.stream_id, code)
            self._send()
        self._close_stream(st.stream_id, H2StreamResetError("stream cancelled", code))

    def _close_stream(self, stream_id: int, exc: Exception | None) -> None:
        st = self.streams.pop(stream_id, None)
        if st is None:
            return
        if exc is None and not st._end_sent and not self.lost:
            # the answer is complete before the request body: close our half
            # too (RFC 9113 8.1), or the stream would count as open forever
            st._end_sent = True
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
            self._send()
        if exc is None:
            st._on_end()
        else:
            st._on_error(exc)
        if self.goaway and not self.streams and self.transport is not None:
            self.transport.loseConnection()
        if self.on_stream_closed is not None:
            self.on_stream_closed(self)

    _corked = False

    def _send(self) -> None:
        if self._corked:
            return
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.lost:
            self.transport.write(data)

    # -- bytes in ------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warn("upstream HTTP/2 protocol error: {error}", error=str(exc))
            self._send()
            self.usable = False
            self.transport.abortConnection()
            return
        for event in events:
            self._event(event)
        self._send()

    def _event(self, ev: Any) -> None:
        E = h2.events
        st = self.streams.get(getattr(ev, "stream_id", 0) or 0)
        if isinstance(ev, E.ResponseReceived):
            if st is not None:
                status, headers = _split_status(ev.headers)
                st._on_head(status, headers)
        elif isinstance(ev, E.DataReceived):
            if st is not None:
                st._on_data(ev.data, ev.flow_controlled_length)
            else:  # a stream we reset: give the connection window back
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, E.TrailersReceived):
            if st is not None:
                st._on_trailers(list(ev.headers))
        elif isinstance(ev, E.StreamEnded):
            self._close_stream(ev.stream_id, None)
        elif isinstance(ev, E.StreamReset):
            self._close_stream(ev.stream_id, H2StreamResetError(
                f"upstream reset the stream ({_code_name(ev.error_code)})",
                int(ev.error_code)))
        elif isinstance(ev, E.WindowUpdated):
            targets = list(self.streams.values()) if not ev.stream_id else [st] if st else []
            for s in targets:
                if s._out:
                    self.flush_stream(s)
        elif isinstance(ev, E.ConnectionTerminated):
            self.goaway = True
            last = ev.last_stream_id if ev.last_stream_id is not None else 0
            for sid in [s for s in self.streams if s > last]:
                self._close_stream(sid, H2StreamResetError("upstream sent GOAWAY", 0))
            if not self.streams and self.transport is not None:
                self.transport.loseConnection()
            if self.on_stream_closed is not None:
                self.on_stream_closed(self)
        elif isinstance(ev, E.RemoteSettingsChanged):
            # a larger INITIAL_WINDOW_SIZE opens every stream's window
            for s in list(self.streams.values()):
                if s._out:
                    self.flush_stream(s)
            if self.on_stream_closed is not None:
                self.on_stream_closed(self)  # more streams may be allowed now


def _split_status(headers: list[Header]) -> tuple[int, list[Header]]:
    status = 0
    out = []
    for name, value in headers:
        if name == b":status":
            status = int(value)
        elif not name.startswith(b":"):
            out.append((name, value))
    return status, out


def _code_name(code: Any) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


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
