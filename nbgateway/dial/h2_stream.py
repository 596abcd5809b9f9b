"""One request/response exchange of the upstream HTTP/2 client
(:mod:`nbgateway.dial.h2`) as the reverse proxy drives it: :class:`H2Stream`
and the client's errors.

It owns the stream's two directions: the response head (``response`` fires
with ``(status, headers)``), the body and trailers handed to a reader sink
(what arrived before the sink is attached is kept and delivered at once),
the receive window re-opened only while the reader is not paused, and the
request body queued as the peer's windows allow, its producer paused above
``BODY_HIGH_WATER``; ``cancel()`` sends ``RST_STREAM(CANCEL)``.  The log
lines keep the ``nbgateway.dial.h2`` namespace.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

import h2.errors
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbgateway.dial import UpstreamError

if TYPE_CHECKING:
    from nbgateway.dial.h2_conn import H2ClientProtocol

log = Logger(namespace="nbgateway.dial.h2")

Header = tuple[bytes, bytes]

#: pause a request body producer when this much is waiting for window
BODY_HIGH_WATER = 256 * 1024


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
