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
- :class:`HeadersFirstBuffer`: ``h2``'s ``FrameBuffer`` that builds a complete
  HEADERS frame (END_HEADERS, no padding, a stream id, within the frame
  size limit, with or without Chrome's priority fields: what browsers send
  for every request) from its
  9-byte header directly, with the attributes ``hyperframe``'s parse gives
  it; every other frame (and any other case) is ``h2``'s.  ``hyperframe``
  spends ~3 us per such frame (the frame's and its ``Flags``' constructors,
  a Python loop over the flag bits, two memoryview copies).
"""

from __future__ import annotations

import struct
from typing import Any

from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from h2.frame_buffer import FrameBuffer
from hyperframe.flags import Flags
from hyperframe.frame import HeadersFrame, RstStreamFrame

#: hyperframe's frame header: 24-bit length (as 16 + 8 bits), type, flags, stream id
_HEADER = struct.Struct(">HBBBL")
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_STREAM, END_HEADERS, PRIORITY = 0x1, 0x4, 0x20


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


#: a parsed HEADERS frame's attributes (hyperframe's defaults)
_HEADERS_TEMPLATE = dict(HeadersFrame(1).__dict__)
#: the flag names HEADERS frames accept (read only, shared by the frames)
_HEADERS_VALID = HeadersFrame(1).flags._valid_flags
_END_HEADERS_ONLY = frozenset(("END_HEADERS",))
_END_HEADERS_AND_STREAM = frozenset(("END_HEADERS", "END_STREAM"))


class HeadersFirstBuffer(FrameBuffer):
    """``h2``'s frame buffer; a complete plain HEADERS frame is built directly
    (see the module docstring)."""

    def __next__(self) -> Any:
        data = self._data
        if len(data) >= 9 and data[3] == HEADERS and not self._headers_buffer:
            flags = data[4]
            length = (data[0] << 16) | (data[1] << 8) | data[2]
            stream_id = ((data[5] << 24) | (data[6] << 16) | (data[7] << 8) | data[8]) & 0x7FFFFFFF
            if (flags & ~(END_STREAM | END_HEADERS | PRIORITY) == 0 and flags & END_HEADERS
                    and stream_id and len(data) >= length + 9 and length <= self.max_frame_size
                    and (length >= 5 or not flags & PRIORITY)):
                frame = HeadersFrame.__new__(HeadersFrame)
                fields = _HEADERS_TEMPLATE.copy()
                marks = Flags.__new__(Flags)
                marks._valid_flags = _HEADERS_VALID
                names = set(_END_HEADERS_AND_STREAM if flags & END_STREAM else _END_HEADERS_ONLY)
                start = 9
                if flags & PRIORITY:  # hyperframe's parse_priority_data
                    names.add("PRIORITY")
                    depends_on = int.from_bytes(data[9:13], "big")
                    fields["exclusive"] = bool(depends_on >> 31)
                    fields["depends_on"] = depends_on & 0x7FFFFFFF
                    fields["stream_weight"] = data[13]
                    start = 14
                marks._flags = names
                fields["stream_id"] = stream_id
                fields["flags"] = marks
                fields["body_len"] = length
                fields["data"] = bytes(data[start:9 + length])
                frame.__dict__ = fields
                del data[:9 + length]
                return frame
        return super().__next__()
