"""One client HTTP/2 connection of the upstream HTTP/2 client
(:mod:`nbgateway.dial.h2`): :class:`H2ClientProtocol`.

It owns the ``h2`` package's sans-IO state machine fed the bytes the
transport reads, the connection's streams (:class:`~nbgateway.dial.h2_stream.H2Stream`),
the receive windows we announce (``STREAM_WINDOW`` per stream,
``CONNECTION_WINDOW`` in all), outgoing DATA as the peer's flow-control
windows allow, ``GOAWAY`` (no new streams; closed when the last stream is
done) and, over TLS, the handshake deadline and the ALPN ``h2`` check
(:class:`~nbgateway.dial.h2_stream.H2NotNegotiatedError` otherwise).  The
log lines keep the ``nbgateway.dial.h2`` namespace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbgateway.dial.h2_stream import (
    H2NotNegotiatedError,
    H2Stream,
    H2StreamResetError,
    H2UpstreamError,
    Header,
)

log = Logger(namespace="nbgateway.dial.h2")

#: per-stream receive window we announce (bytes buffered at most per paused stream)
STREAM_WINDOW = 256 * 1024
#: connection receive window (all streams together)
CONNECTION_WINDOW = 4 * 1024 * 1024


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
