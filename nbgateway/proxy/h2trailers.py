"""HTTP/2 response trailers on the client-facing side.

``twisted.web``'s ``Request`` has no API for response trailers, and Twisted's
``H2Connection`` ends every stream with an empty ``DATA`` frame carrying
``END_STREAM`` (``h2``'s ``end_stream``).  gRPC needs the status
(``grpc-status``, ``grpc-message``, trailing metadata) in a final ``HEADERS``
frame instead.  This module owns the smallest hook for that:

- :class:`TrailersH2Connection`, the ``H2Connection`` the gateway's channel
  hands an ALPN ``h2`` connection to (:mod:`nbgateway.proxy.streaming`); its
  ``h2`` state machine is a :class:`_TrailingH2State` whose ``end_stream``
  sends the stream's pending trailers as ``HEADERS`` + ``END_STREAM`` when it
  has some, after all queued data (the same place Twisted ends the stream, so
  ordering and flow control are Twisted's);
- :func:`set_trailers`: called before ``request.finish()`` to attach trailers
  to a request's stream; False when the request is not on such a stream
  (HTTP/1.1: trailers are dropped, twisted.web cannot send chunked trailers).

Pending trailers are forgotten when their stream is done or reset, so they
are bounded by the open streams.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import h2.config
import h2.connection
from twisted.web._http2 import H2Connection

Header = tuple[bytes, bytes]


class _TrailingH2State(h2.connection.H2Connection):
    """``h2`` server state machine that ends a stream with trailers when some
    were attached."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self.pending_trailers: dict[int, list[Header]] = {}

    def end_stream(self, stream_id: int) -> None:
        trailers = self.pending_trailers.pop(stream_id, None)
        if trailers:
            self.send_headers(stream_id, trailers, end_stream=True)
        else:
            super().end_stream(stream_id)


class TrailersH2Connection(H2Connection):
    """Twisted's server ``H2Connection`` able to send response trailers."""

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.conn = _TrailingH2State(self.conn.config)

    def _requestDone(self, streamID: int) -> None:
        self.conn.pending_trailers.pop(streamID, None)
        super()._requestDone(streamID)

    def connectionLost(self, reason: Any, _cancelTimeouts: bool = True) -> None:
        self.conn.pending_trailers.clear()
        super().connectionLost(reason, _cancelTimeouts)


def set_trailers(request: Any, trailers: Iterable[Header]) -> bool:
    """Send ``trailers`` (lower-case names, bytes) at the end of ``request``'s
    HTTP/2 stream.  Call before ``request.finish()``.  False when the request
    is not served by a :class:`TrailersH2Connection` stream."""
    channel = getattr(request, "channel", None)
    state = getattr(getattr(channel, "_conn", None), "conn", None)
    if not isinstance(state, _TrailingH2State):
        return False
    stream_id = getattr(channel, "streamID", None)
    if stream_id is None:
        return False
    items = [(bytes(n).lower(), bytes(v)) for n, v in trailers]
    if items:
        state.pending_trailers[stream_id] = items
    return True
