"""Frame-level shortcuts of the gateway's ``h2`` server state machine
(:class:`~nbgateway.proxy.h2trailers._TrailingH2State` and its streams).

- :func:`framed`: a DATA, HEADERS or CONTINUATION frame serialised at once,
  as ``hyperframe`` serialises it without padding or priority (the 9-byte
  header, then the body), wrapped in a :class:`Framed` that ``h2``'s
  ``_prepare_for_sending`` reads as it reads a frame (``serialize()``,
  ``body_len``).  ``hyperframe``'s frame objects cost a ``Flags`` set
  (built by a set comprehension per frame), attribute set-up and a second
  serialising pass for every frame sent: ~2-4 us each, three per response.
- :func:`receive_frame`: ``h2``'s ``_receive_frame`` (the frame's handler
  from the dispatch table, a stream closed by reset answered with
  RST_STREAM, a stream id too low a stream or connection error as h2 decides
  it) without the ``repr(frame)`` it formats for its logger's ``trace`` call,
  a no-op on h2's default ``DummyLogger`` (~3 us per received frame).  With
  any other logger the connection keeps h2's own method.
"""

from __future__ import annotations

import struct
from typing import Any

from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hyperframe.frame import RstStreamFrame

#: hyperframe's frame header: 24-bit length (as 16 + 8 bits), type, flags, stream id
_HEADER = struct.Struct(">HBBBL")
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4


class Framed:
    """A frame already serialised: what ``h2`` reads of a frame it sends."""

    __slots__ = ("body_len", "data")

    def __init__(self, data: bytes, body_len: int) -> None:
        self.data = data
        self.body_len = body_len

    def serialize(self) -> bytes:
        return self.data


def framed(kind: int, flags: int, stream_id: int, body: bytes) -> Framed:
    """``kind`` (DATA, HEADERS, CONTINUATION) with ``flags`` on ``stream_id``."""
    size = len(body)
    return Framed(_HEADER.pack((size >> 8) & 0xFFFF, size & 0xFF, kind, flags,
                               stream_id & 0x7FFFFFFF) + body, size)


def receive_frame(conn: Any, frame: Any) -> list[Any]:
    """``h2``'s ``H2Connection._receive_frame`` for ``conn`` without its
    logger's ``repr(frame)`` (see the module docstring)."""
    try:
        frames, events = conn._frame_dispatch_table[frame.__class__](frame)
    except StreamClosedError as e:
        # closed by RST_STREAM: a stream error, answered with RST_STREAM;
        # otherwise a connection error
        if not conn._stream_is_closed_by_reset(e.stream_id):
            raise
        reset = RstStreamFrame(e.stream_id)
        reset.error_code = e.error_code
        conn._prepare_for_sending([reset])
        return e._events
    except StreamIDTooLowError as e:
        if conn._stream_is_closed_by_reset(e.stream_id):
            reset = RstStreamFrame(e.stream_id)
            reset.error_code = ErrorCodes.STREAM_CLOSED
            conn._prepare_for_sending([reset])
            return []
        if conn._stream_is_closed_by_end(e.stream_id):
            raise StreamClosedError(e.stream_id) from e
        raise  # closed implicitly: PROTOCOL_ERROR
    conn._prepare_for_sending(frames)
    return events
