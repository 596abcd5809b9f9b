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

A gRPC request (``content-type: application/grpc``) with a body to come is
dispatched when its headers arrive, not at its first DATA frame (Twisted
has no "headers complete" hook for HTTP/2 streams), so a bidirectional call
whose server speaks first works.

Its streams are scheduled by :class:`LazyPriority` (a round robin until the
client signals priorities, then Twisted's priority tree).

Its send loop is Twisted's (priority, flow control, end of stream) but sends
up to :data:`FRAMES_PER_TURN` DATA frames per reactor turn in one write
instead of one frame per turn.

The same subclass keeps a count of each stream's queued response bytes, so
``remainingOutboundWindow`` is O(1) (Twisted sums the whole send queue on
every frame, quadratic for a long server stream) and a stream's producer is
paused once :data:`STREAM_QUEUE_HIGH` bytes wait even when the client's
window is larger (bounded memory), and resumed when the queue has drained
to a quarter of that, without waiting for the client's next WINDOW_UPDATE.

Its streams check a received request or trailer header block in one pass
(:func:`check_request_headers`): the same rules and the same result as
``h2``'s inbound normalisation and validation (cookie fields joined and
moved last; RFC 9113 8.2.1 characters, pseudo-header fields, connection-
specific fields, ``te``, ``:authority``/``Host``, empty ``:path``), any
breach a ``ProtocolError`` (the connection ends with ``GOAWAY``, as before).
``h2`` runs seven chained generators and a Python loop over every byte of
every name and value; this is one loop and two C scans per block, ~15 % of an
HTTP/2 request's instructions (bench/h2_path.py).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterable
from typing import Any

import h2.config
import h2.connection
import priority
from h2.config import DummyLogger, H2Configuration
from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    ConnectionState,
    H2ConnectionStateMachine,
    _decode_headers,
)
from h2.events import _ResponseSent
from h2.exceptions import (
    FlowControlError,
    FrameTooLargeError,
    ProtocolError,
    TooManyStreamsError,
)
from h2.stream import STREAM_OPEN, H2Stream, StreamInputs, StreamState, _transitions
from h2.utilities import (
    _ALLOWED_PSEUDO_HEADER_FIELDS,
    _SECURE_HEADERS,
    CONNECTION_HEADERS,
    HeaderValidationFlags,
    _check_pseudo_header_field_acceptability,
)
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from twisted.internet.defer import Deferred
from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection

from nbgateway.proxy.h2_frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    HeadersFirstBuffer,
    framed,
    receive_frame,
)
from nbgateway.proxy.h2_hpack import BlockDecoder, TableEncoder
from nbgateway.proxy.h2_lean import lean_stream
from nbgateway.proxy.h2_stream import GatewayH2Stream

Header = tuple[bytes, bytes]

#: response bytes queued on one stream before its producer is paused
STREAM_QUEUE_HIGH = 256 * 1024
#: DATA frames sent per reactor turn, in one transport write
FRAMES_PER_TURN = 8
#: scheduler nodes kept for streams not open (PRIORITY frames on idle or
#: closed streams; Firefox's grouping uses ~6); more such frames are ignored
IDLE_PRIORITY_NODES = 100

#: the bytes a field name may hold: an RFC 9110 token (``field-name =
#: token``) without upper case (RFC 9113 8.2.1), and the colon only as a
#: pseudo-header field's first byte.  Stricter than ``h2`` (which lets any
#: visible ASCII but upper case through): Twisted's ``Headers`` raises
#: ``InvalidHeaderName`` for a non-token name inside the stream's
#: constructor, out of ``dataReceived`` into the reactor.
_NAME_OK = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
#: bytes no field value may hold anywhere
_VALUE_BAD = b"\x00\n\r"
_CLOSED = StreamState.CLOSED
_OPEN = StreamState.OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_SERVER_OPEN = ConnectionState.SERVER_OPEN
# Transitions that change nothing (no event, the same state) are skipped on
# the hot paths below when the machine is in that state (h2's process_input
# is a Python call hashing two enums through Enum.__hash__): the connection
# of a server receiving or sending headers or sending data, a stream that
# sends data while open or half closed (remote).
for _state, _input in ((_SERVER_OPEN, ConnectionInputs.RECV_HEADERS),
                       (_SERVER_OPEN, ConnectionInputs.SEND_HEADERS),
                       (_SERVER_OPEN, ConnectionInputs.SEND_DATA)):
    if H2ConnectionStateMachine._transitions.get((_state, _input)) != (None, _state):
        raise ImportError(f"h2's connection transition {_state} {_input} is not a no-op")
for _state in (_OPEN, _HALF_CLOSED_REMOTE):
    if _transitions.get((_state, StreamInputs.SEND_DATA)) != (None, _state):
        raise ImportError(f"h2's stream transition {_state} SEND_DATA is not a no-op")

#: h2's stream transitions (``_transitions``), at index ``state << 5 |
#: input`` of the enums' values: found without hashing the two enums
_STREAM_STEPS: list[Any] = [None] * ((max(StreamState) + 1) << 5)
if max(i._value_ for i in StreamInputs) >= 32:
    raise ImportError("h2's StreamInputs do not fit the transition index")
for (_state, _input), _step in _transitions.items():
    _STREAM_STEPS[_state._value_ << 5 | _input._value_] = _step


def _stream_input(machine: Any, input_: StreamInputs) -> list[Any]:
    """``machine.process_input(input_)`` (``h2``'s stream state machine):
    the same transition, state, events and errors, the transition found by
    the enums' values (``process_input`` hashes both through
    ``Enum.__hash__``, a Python call each)."""
    step = _STREAM_STEPS[machine.state._value_ << 5 | input_._value_]
    if step is None:
        old_state = machine.state
        machine.state = _CLOSED
        raise ProtocolError(f"Invalid input {input_} in state {old_state}")
    func, target = step
    previous = machine.state
    machine.state = target
    if func is not None:
        try:
            return func(machine, previous)  # type: ignore[no-any-return]
        except ProtocolError:
            machine.state = _CLOSED
            raise
        except AssertionError as err:  # (h2's: never expected)
            machine.state = _CLOSED
            raise ProtocolError(err) from err
    return []
#: a response head's pseudo-header fields when it has only ``:status``
_STATUS_ONLY = frozenset((b":status",))

# h2's boolean options are descriptors over ``_<name>`` instance attributes;
# the hot paths below read those directly (each descriptor read is a Python
# call)
for _option in ("client_side", "split_outbound_cookies", "normalize_outbound_headers",
                "validate_outbound_headers", "validate_inbound_headers",
                "normalize_inbound_headers"):
    if getattr(H2Configuration.__dict__.get(_option), "attr_name", None) != f"_{_option}":
        raise ImportError(f"h2's H2Configuration.{_option} is not the descriptor expected")
if not isinstance(H2Configuration.__dict__.get("header_encoding"), property):
    raise ImportError("h2's H2Configuration.header_encoding is not the property expected")
#: the validation flags of a request block a server receives
_REQUEST_FLAGS = HeaderValidationFlags(is_client=False, is_trailer=False,
                                       is_response_header=False, is_push_promise=False)


def _ends_in_space(value: bytes) -> bool:
    first = value[0]
    last = value[-1]
    return first == 0x20 or first == 0x09 or last == 0x20 or last == 0x09


def check_request_headers(headers: Iterable[Any],
                          flags: HeaderValidationFlags) -> list[Any]:
    """See :func:`_checked_request` (the list only)."""
    return _checked_request(headers, flags)[0]


#: regular request field names known to pass every name-only check of
#: :func:`_checked_request` (token bytes, not connection-specific, not
#: ``te``, ``host`` or ``cookie``): name -> True, or False for
#: ``content-length`` (passes too; the caller scans for it).  Names of at
#: most :data:`_KNOWN_NAME_LEN` bytes, at most :data:`_KNOWN_NAMES` of them
#: (cleared when full): a browser sends the same ~15 names on every request.
_KNOWN: dict[bytes, bool] = {}
_KNOWN_NAMES = 1024
_KNOWN_NAME_LEN = 64


def _checked_request(headers: Iterable[Any],
                     flags: HeaderValidationFlags) -> tuple[list[Any], bool]:
    """A server's received request (or trailer) header block, normalised and
    validated as ``h2``'s ``normalize_inbound_headers`` then
    ``validate_headers`` do it, in one pass: the same list (``cookie``
    fields joined with ``"; "`` into one never-indexed field, last) or a
    :class:`~h2.exceptions.ProtocolError` for the same blocks; and whether
    a field is named ``content-length``.

    A regular name seen before (:data:`_KNOWN`) costs one dict read; other
    names take every check and their bytes are checked once over the names
    joined (one C scan).  Values are checked with three C searches over
    them joined, not per field: per field, ``bytes.translate``'s table
    set-up and a regular expression's search each cost more than the
    check."""
    out: list[Any] = []
    cookies: list[bytes] | None = None
    pseudo: set[bytes] = set()
    fresh: list[bytes] | None = None  # names not in _KNOWN
    regular = False
    length = False
    method = authority = host = None
    trailer = flags.is_trailer
    known = _KNOWN
    for header in headers:
        name = header[0]
        value = header[1]
        if value:
            first = value[0]
            last = value[-1]
            if ((first == 0x20 or first == 0x09 or last == 0x20 or last == 0x09)
                    and name != b"cookie"):  # (a cookie's edges are the joined value's)
                raise ProtocolError(f"Received header value surrounded by whitespace {value!r}")
        plain = known.get(name)
        if plain is not None:
            if not plain:
                length = True
            regular = True
            out.append(header)
            continue
        if name == b"cookie":  # joined, checked and placed last (below)
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            continue
        if not name:
            raise ProtocolError("Received header name with zero length.")
        if fresh is None:
            fresh = [name]
        else:
            fresh.append(name)
        if name[0] == 0x3A:  # ":"
            if name in pseudo:
                raise ProtocolError(f"Received duplicate pseudo-header field {name!r}")
            pseudo.add(name)
            if regular:
                raise ProtocolError(f"Received pseudo-header field out of sequence: {name!r}")
            if name not in _ALLOWED_PSEUDO_HEADER_FIELDS:
                raise ProtocolError(f"Received custom pseudo-header field {name!r}")
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value and not trailer:
                raise ProtocolError("An empty :path header is forbidden")
        else:
            regular = True
            if name in CONNECTION_HEADERS:
                raise ProtocolError(f"Connection-specific header field present: {name!r}.")
            if name == b"te":
                if value.lower() != b"trailers":
                    raise ProtocolError(f"Invalid value for TE header: {value!r}")
            elif name == b"host":
                if not trailer:
                    if host is not None:
                        raise ProtocolError("Request header block has multiple Host headers.")
                    host = value
            elif name == b"content-length":
                length = True
        out.append(header)
    if fresh is not None:
        # every name byte allowed; the only colons the pseudo-header fields'
        # first bytes (each of them starts with one: one left per field)
        if b"".join(fresh).translate(None, _NAME_OK) != b":" * len(pseudo):
            raise ProtocolError("Illegal character in a header name")
        if len(known) + len(fresh) > _KNOWN_NAMES:
            known.clear()
        for name in fresh:  # the regular names that passed
            if (name[0] != 0x3A and len(name) <= _KNOWN_NAME_LEN and name != b"te"
                    and name != b"host"):
                known[name] = name != b"content-length"
    values = b"".join([h[1] for h in out])
    if cookies is not None:
        joined = b"; ".join(cookies)
        if joined and _ends_in_space(joined):
            raise ProtocolError(f"Received header value surrounded by whitespace {joined!r}")
        values += joined
        out.append(NeverIndexedHeaderTuple(b"cookie", joined))
    # (find, not "in": a bytes needle's __contains__ first tries it as an int)
    if values.find(b"\x00") >= 0 or values.find(b"\n") >= 0 or values.find(b"\r") >= 0:
        raise ProtocolError("Illegal character (NUL, LF or CR) in a header value")
    _check_pseudo_header_field_acceptability(pseudo, method, flags)
    if not trailer:
        if authority is None and host is None:
            raise ProtocolError(
                "Request header block does not have an :authority or Host header.")
        if authority is not None and host is not None and authority != host:
            raise ProtocolError("Request header block has mismatched :authority and "
                                f"Host headers: {authority!r} / {host!r}")
    return out, length


def prepare_response_headers(headers: Iterable[Any],
                             flags: HeaderValidationFlags) -> list[Any]:
    """A server's response (or trailer) header block about to be encoded,
    normalised and validated as ``h2``'s ``normalize_outbound_headers``
    (cookies not split) then ``validate_outbound_headers`` do it, in one
    pass: names lower-cased, names and values stripped, connection-specific
    fields dropped, ``authorization``/``proxy-authorization`` and short
    ``cookie`` fields never indexed; ``te`` other than ``trailers`` and
    pseudo-header misuse a :class:`~h2.exceptions.ProtocolError` (raised
    before any field reaches the HPACK encoder)."""
    block = _response_block(headers)
    _check_pseudo_header_field_acceptability(block.pseudo, block.method, flags)
    return block.fields


class _ResponseBlock:
    """A response/trailer block after :func:`_response_block`."""

    __slots__ = ("fields", "informational", "method", "pseudo", "sent_method")

    def __init__(self, fields: list[Any], pseudo: set[bytes], method: bytes | None,
                 informational: bool, sent_method: bytes | None) -> None:
        #: the normalised fields, ready for the HPACK encoder
        self.fields = fields
        #: the pseudo-header names and the :method value (normalised), for
        #: the check that needs the stream's validation flags
        self.pseudo = pseudo
        self.method = method
        #: ``h2``'s ``is_informational_response`` and ``extract_method_header``
        #: of the UTF-8 encoded block (before normalisation)
        self.informational = informational
        self.sent_method = sent_method


#: response field names (as given, bytes) that the outbound pass only
#: lower-cases and strips: name -> that form, for names whose form is not
#: empty, no pseudo-header field, not connection-specific, not sent never
#: indexed (``authorization``, ``proxy-authorization``, ``cookie``) and not
#: ``te``; ``b""`` for the other names (``:status`` among them).  At most
#: :data:`_KNOWN_NAMES` names of at most :data:`_KNOWN_NAME_LEN` bytes
#: (cleared when full): twisted.web's and the upstream's ~15 names per
#: response.
_PLAIN_OUT: dict[bytes, bytes] = {}


def _plain_out(name: bytes) -> bytes:
    """``name``'s entry for :data:`_PLAIN_OUT` (remembered when short)."""
    low = name.lower().strip()
    if (not low or low[0] == 0x3A or low in CONNECTION_HEADERS or low in _SECURE_HEADERS
            or low == b"cookie" or low == b"te"):
        low = b""
    if len(name) <= _KNOWN_NAME_LEN:
        if len(_PLAIN_OUT) >= _KNOWN_NAMES:
            _PLAIN_OUT.clear()
        _PLAIN_OUT[name] = low
    return low


def _response_block(headers: Iterable[Any]) -> _ResponseBlock:
    """One pass over a block to send: ``h2``'s UTF-8 encoding of names and
    values, its informational-response and ``:method`` scans, then
    :func:`prepare_response_headers`' normalisation and every check but the
    one needing the validation flags.  A ``(bytes, bytes)`` tuple whose
    name is in :data:`_PLAIN_OUT` is only lower-cased (remembered) and
    stripped."""
    out: list[Any] = []
    pseudo: set[bytes] = set()
    regular = False
    method = sent_method = None
    informational = False
    leading = True  # still in the leading pseudo-header fields (h2's scan)
    plain_out = _PLAIN_OUT
    for header in headers:
        name = header[0]
        value = header[1]
        if type(header) is tuple and type(value) is bytes:
            low = plain_out.get(name)
            if low is None and type(name) is bytes:
                low = _plain_out(name)
            if low:
                # (a regular name: h2's scans stop at it; nothing else to check)
                leading = False
                regular = True
                out.append((low, value.strip()))
                continue
        if not isinstance(name, bytes):
            name = name.encode("utf-8")
        if not isinstance(value, bytes):
            value = value.encode("utf-8")
        if leading:
            if not name.startswith(b":"):
                leading = False
            elif name == b":status":
                informational = value.startswith(b"1")
                leading = False
        if sent_method is None and name == b":method":
            sent_method = value
        name = name.lower().strip()
        value = value.strip()
        if name in CONNECTION_HEADERS:
            continue
        if name in _SECURE_HEADERS or (name == b"cookie" and len(value) < 20):
            header = NeverIndexedHeaderTuple(name, value)
        elif isinstance(header, HeaderTuple):
            header = header.__class__(name, value)
        else:
            header = (name, value)
        if not name:  # h2 fails on it too (an IndexError)
            raise ProtocolError("Header name with zero length.")
        if name[0] == 0x3A:  # ":"
            if name in pseudo:
                raise ProtocolError(f"Received duplicate pseudo-header field {name!r}")
            pseudo.add(name)
            if regular:
                raise ProtocolError(f"Received pseudo-header field out of sequence: {name!r}")
            if name not in _ALLOWED_PSEUDO_HEADER_FIELDS:
                raise ProtocolError(f"Received custom pseudo-header field {name!r}")
            if name == b":method":
                method = value
        else:
            regular = True
            if name == b"te" and value.lower() != b"trailers":
                raise ProtocolError(f"Invalid value for TE header: {value!r}")
        out.append(header)
    return _ResponseBlock(out, pseudo, method, informational, sent_method)


class _CheckedStream(H2Stream):
    """``h2``'s stream whose received request and trailer header blocks go
    through :func:`check_request_headers` and whose response and trailer
    blocks go through :func:`prepare_response_headers` (server side, bytes
    headers, the default normalise + validate configuration); anything else
    is ``h2``'s."""

    #: the connection's configuration with the outbound steps off (they ran
    #: here already), set by :class:`_TrailingH2State`
    raw_config: h2.config.H2Configuration

    def send_headers(self, headers: Any, encoder: Any, end_stream: bool = False) -> Any:
        """``h2``'s steps for a server's response/trailer block (state
        transition, validation flags, encoding, framing, end of stream) with
        its UTF-8 encoding, scans, normalisation and checks in one pass
        (:func:`_response_block`).  A block that pass refuses goes through
        ``h2``'s own steps, so the same error comes at the same point (after
        the state transition)."""
        config = self.config
        # (config.split_outbound_cookies... read without their descriptors)
        if (self.state_machine.client or config._split_outbound_cookies
                or not config._normalize_outbound_headers
                or not config._validate_outbound_headers):
            return super().send_headers(headers, encoder, end_stream)
        if not isinstance(headers, (list, tuple)):
            headers = list(headers)  # read twice when refused: an iterator once
        try:
            block = _response_block(headers)
        except Exception:
            return super().send_headers(headers, encoder, end_stream)
        logger = config.logger
        if type(logger) is not DummyLogger:
            logger.debug("Send headers %s on %r", headers, self)
        if block.informational:
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses.")
            input_ = StreamInputs.SEND_INFORMATIONAL_HEADERS
        else:
            input_ = StreamInputs.SEND_HEADERS
        events = _stream_input(self.state_machine, input_)
        if type(events[0]) is not _ResponseSent or block.pseudo != _STATUS_ONLY:
            flags = self._build_hdr_validation_flags(events)
            _check_pseudo_header_field_acceptability(block.pseudo, block.method, flags)
        # (else: a server's response head, h2's flags is_response_header
        # only, and its one pseudo-header field the :status the check asks)
        encoded = encoder.encode(block.fields)
        size = self.max_outbound_frame_size or 0
        stream_id = self.stream_id
        # the frames serialised at once (h2_frames.framed), as h2's would be
        end = END_STREAM if end_stream else 0
        if 0 < len(encoded) <= size:
            frames: list[Any] = [framed(HEADERS, end | END_HEADERS, stream_id, encoded)]
        else:  # h2's split into CONTINUATION frames (and its errors)
            chunks = [encoded[i:i + size] for i in range(0, len(encoded), size)]
            last = len(chunks) - 1
            frames = [framed(HEADERS, end | (END_HEADERS if last == 0 else 0), stream_id,
                             chunks[0])]
            for i in range(1, last + 1):
                frames.append(framed(CONTINUATION, END_HEADERS if i == last else 0, stream_id,
                                     chunks[i]))
        if end_stream:
            _stream_input(self.state_machine, StreamInputs.SEND_END_STREAM)
        if self.state_machine.trailers_sent and not end_stream:
            raise ProtocolError("Trailers must have END_STREAM set.")
        self.request_method = block.sent_method
        return frames

    def send_data(self, data: Any, end_stream: bool = False,
                  pad_length: int | None = None) -> list[Any]:
        """``h2``'s steps (state transitions, the stream's window) with the
        frame serialised at once (:func:`~nbgateway.proxy.h2_frames.framed`);
        padded or memoryview data is ``h2``'s."""
        if pad_length is not None or type(data) is not bytes:
            return super().send_data(data, end_stream, pad_length)
        machine = self.state_machine
        state = machine.state
        if state is not _HALF_CLOSED_REMOTE and state is not _OPEN:  # (else a no-op)
            _stream_input(machine, StreamInputs.SEND_DATA)
        if end_stream:
            _stream_input(machine, StreamInputs.SEND_END_STREAM)
        size = len(data)
        self.outbound_flow_control_window -= size
        assert self.outbound_flow_control_window >= 0 or size == 0
        return [framed(DATA, END_STREAM if end_stream else 0, self.stream_id, data)]

    def end_stream(self) -> list[Any]:
        """``h2``'s: an empty DATA frame with END_STREAM (serialised at once)."""
        _stream_input(self.state_machine, StreamInputs.SEND_END_STREAM)
        return [framed(DATA, END_STREAM, self.stream_id, b"")]

    def _build_headers_frames(self, headers: Any, encoder: Any, first_frame: Any,
                              hdr_validation_flags: Any) -> Any:
        flags = hdr_validation_flags
        config = self.config
        if (flags.is_client or flags.is_push_promise or config.split_outbound_cookies
                or not config.normalize_outbound_headers
                or not config.validate_outbound_headers):
            return super()._build_headers_frames(headers, encoder, first_frame, flags)
        headers = prepare_response_headers(headers, flags)
        self.config = self.raw_config  # h2 then only encodes and frames them
        try:
            return super()._build_headers_frames(headers, encoder, first_frame, flags)
        finally:
            self.config = config

    def receive_request(self, headers: list[Any], end_stream: bool) -> list[Any]:
        """``h2``'s ``receive_headers`` for a new stream's request block on a
        server with the default inbound configuration: the block is checked
        first (:func:`_checked_request`, no side effects) and, when it
        passes, ``h2``'s steps run without what that check answers already
        (no ``:status``: not informational; the validation flags of a
        request; the scan for ``content-length`` only when the names hold
        one).  A block the check refuses takes ``h2``'s own steps, so the
        same error comes at the same point.  The stream's events."""
        try:
            checked, length = _checked_request(headers, _REQUEST_FLAGS)
        except ProtocolError:
            return self.receive_headers(headers, end_stream, self.config.header_encoding)[1]
        machine = self.state_machine
        events = _stream_input(machine, StreamInputs.RECV_HEADERS)
        event = events[0]
        if end_stream:
            ended = _stream_input(machine, StreamInputs.RECV_END_STREAM)
            event.stream_ended = ended[0]
            events += ended
        if length or self.request_method == b"HEAD":
            self._initialize_content_length(headers)
        else:
            self._expected_content_length = None
        event.headers = checked
        return events

    def _process_received_headers(self, headers: Any, header_validation_flags: Any,
                                  header_encoding: Any) -> list[Any]:
        flags = header_validation_flags
        config = self.config
        if (isinstance(header_encoding, str) or flags.is_client or flags.is_response_header
                or flags.is_push_promise or not config.validate_inbound_headers
                or not config.normalize_inbound_headers):
            return super()._process_received_headers(headers, flags, header_encoding)
        return check_request_headers(headers, flags)


class _TrailingH2State(h2.connection.H2Connection):
    """``h2`` server state machine that ends a stream with trailers when some
    were attached."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        # the same HPACK, one loop per block and an indexed table search
        # (nbgateway.proxy.h2_hpack); nothing was encoded or decoded yet
        decoder = BlockDecoder()
        decoder.max_header_list_size = self.decoder.max_header_list_size
        decoder.max_allowed_table_size = self.decoder.max_allowed_table_size
        self.encoder = TableEncoder()
        self.decoder = decoder
        self.incoming_buffer.__class__ = HeadersFirstBuffer  # same layout
        self.pending_trailers: dict[int, list[Header]] = {}
        #: response bytes queued per stream, not yet handed to ``send_data``
        self.queued: dict[int, int] = {}
        self.on_drained: Any = None
        raw = copy.copy(config)
        raw.normalize_outbound_headers = False
        raw.validate_outbound_headers = False
        self.raw_config = raw

    def _open_streams(self, remainder: int) -> int:
        """``h2``'s count of the open streams whose id % 2 is ``remainder``,
        pruning the closed ones (their ``closed_by`` kept), with each
        stream's state read once instead of through its ``open`` and
        ``closed`` properties (two Python calls per stream; run for every
        new stream, over every stream the connection holds)."""
        count = 0
        to_delete = None
        streams = self.streams
        for stream_id, stream in streams.items():
            state = stream.state_machine.state
            if STREAM_OPEN[state] and stream_id % 2 == remainder:
                count += 1
            elif state is _CLOSED:
                if to_delete is None:
                    to_delete = [stream_id]
                else:
                    to_delete.append(stream_id)
        if to_delete is not None:
            closed = self._closed_streams
            for stream_id in to_delete:
                closed[stream_id] = streams.pop(stream_id).state_machine.stream_closed_by
        return count

    def _receive_frame(self, frame: Any) -> list[Any]:
        if type(self.config.logger) is h2.config.DummyLogger:
            return receive_frame(self, frame)  # h2's steps without repr(frame)
        return super()._receive_frame(frame)

    def _receive_headers_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        """``h2``'s steps for a HEADERS frame; one opening a new stream on a
        server with the default inbound configuration goes
        straight to the new stream (no KeyError first) and its
        :meth:`_CheckedStream.receive_request`; anything else is ``h2``'s."""
        stream_id = frame.stream_id
        config = self.config
        # (the options read without their descriptors and property)
        if (stream_id in self.streams or config._client_side
                or config._header_encoding or not config._validate_inbound_headers
                or not config._normalize_inbound_headers):
            return super()._receive_headers_frame(frame)
        max_open = self.local_settings.max_concurrent_streams
        value = self._open_streams(1)  # open_inbound_streams of a server (also prunes)
        if value + 1 > max_open:
            raise TooManyStreamsError(f"Max inbound streams is {max_open}, {value} open")
        headers = _decode_headers(self.decoder, frame.data)
        machine = self.state_machine
        events = ([] if machine.state is _SERVER_OPEN  # (a no-op there)
                  else machine.process_input(ConnectionInputs.RECV_HEADERS))
        stream = self._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
        flags = frame.flags
        stream_events = stream.receive_request(headers, "END_STREAM" in flags)
        if "PRIORITY" in flags:  # h2's: the priority's event, linked to the request's
            _frames, priority_events = self._receive_priority_frame(frame)
            stream_events[0].priority_updated = priority_events[0]
            stream_events.extend(priority_events)
        return [], events + stream_events

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = _CheckedStream  # same layout, two methods differ
        stream.raw_config = self.raw_config
        return stream

    def _prepare_for_sending(self, frames: list[Any]) -> None:
        if len(frames) != 1:
            super()._prepare_for_sending(frames)
            return
        frame = frames[0]  # h2's steps for one frame, without two generators
        self._data_to_send += frame.serialize()
        assert frame.body_len <= self.max_outbound_frame_size

    def send_data(self, stream_id: int, data: Any, end_stream: bool = False,
                  pad_length: Any = None) -> None:
        stream = self.streams.get(stream_id)
        if pad_length is not None or type(data) is not bytes or stream is None:
            super().send_data(stream_id, data, end_stream=end_stream, pad_length=pad_length)
        else:
            # h2's send_data steps (the same checks, errors and order) without
            # its logger calls and second stream lookup
            size = len(data)
            window = min(self.outbound_flow_control_window, stream.outbound_flow_control_window)
            if size > 0 and size > window:
                raise FlowControlError(
                    f"Cannot send {size} bytes, flow control window is {window}")
            if size > self.max_outbound_frame_size:
                raise FrameTooLargeError(f"Cannot send frame size {size}, max frame size is "
                                         f"{self.max_outbound_frame_size}")
            machine = self.state_machine
            if machine.state is not _SERVER_OPEN:  # (a no-op there)
                machine.process_input(ConnectionInputs.SEND_DATA)
            self._prepare_for_sending(stream.send_data(data, end_stream))
            self.outbound_flow_control_window -= size
            assert self.outbound_flow_control_window >= 0 or size == 0
        before = self.queued.get(stream_id, 0)
        left = max(0, before - len(data))
        self.queued[stream_id] = left
        if left <= STREAM_QUEUE_HIGH // 4 < before and self.on_drained is not None:
            self.on_drained(stream_id)

    def local_flow_control_window(self, stream_id: int) -> int:
        """h2's: the smaller of the connection's and the stream's outbound
        windows; the stream looked up in place (``_get_stream_by_id``, a
        Python call, only for its errors when the stream is not held)."""
        stream = self.streams.get(stream_id) if stream_id else None
        if stream is None:
            return super().local_flow_control_window(stream_id)
        window = self.outbound_flow_control_window
        own = stream.outbound_flow_control_window
        return own if own < window else window

    def send_response_head(self, stream_id: int, block: list[Any]) -> None:
        """``send_headers(stream_id, block)`` for a stream this connection
        knows: h2's steps (the connection's transition, the stream's frames)
        without its logger call, limit check for new streams and priority
        handling; an unknown stream is h2's (its errors)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            self.send_headers(stream_id, block)
            return
        machine = self.state_machine
        if machine.state is not _SERVER_OPEN:  # (a no-op there)
            machine.process_input(ConnectionInputs.SEND_HEADERS)
        self._prepare_for_sending(stream.send_headers(block, self.encoder, False))

    def end_stream(self, stream_id: int) -> None:
        trailers = self.pending_trailers.pop(stream_id, None)
        if trailers:
            self.send_headers(stream_id, trailers, end_stream=True)
        else:
            super().end_stream(stream_id)


class LazyPriority:
    """The send loop's stream scheduler: round robin over the streams with
    data to send while the client has sent no priority information, else
    (from the first non-default priority on) the ``priority`` package's
    ``PriorityTree`` Twisted uses, built from the streams then open.

    Twisted's tree with every stream at the default priority (weight 16 on
    stream 0) is a fair round robin too, at ~7 % of an HTTP/2 request's
    instructions (bench/h2_path.py: ~142k of 2.04M).  Clients that signal
    priorities (Chrome's HEADERS, PRIORITY frames) get the tree, as before.
    Same interface and errors as the tree for the calls Twisted makes."""

    def __init__(self) -> None:
        #: the open streams in insertion order (the tree's input on switching)
        self.streams: dict[int, None] = {}
        #: the unblocked streams, next to send first
        self.ready: dict[int, None] = {}
        self.tree: priority.PriorityTree | None = None

    def _to_tree(self) -> priority.PriorityTree:
        tree = priority.PriorityTree()
        for stream_id in self.streams:
            tree.insert_stream(stream_id)
            if stream_id not in self.ready:
                tree.block(stream_id)
        self.tree = tree
        self.streams.clear()
        self.ready.clear()
        return tree

    def _parent_known(self, depends_on: int | None) -> bool:
        if not depends_on:
            return True
        if self.tree is None:
            return depends_on in self.streams
        return depends_on in self.tree._streams  # the tree's own index

    def insert_stream(self, stream_id: int, depends_on: int | None = None, weight: int = 16,
                      exclusive: bool = False) -> None:
        if not self._parent_known(depends_on):
            # a dependency on a stream not in the tree (closed or never
            # opened) gives the default priority (RFC 7540 5.3.1); the tree
            # would add a placeholder for it that no one removes: one more
            # node per such request, each costing every later scheduling
            # step, until its 1,000-node limit fails the connection
            depends_on, weight, exclusive = None, 16, False
        tree = self.tree
        if (tree is None and not depends_on and weight == 16 and not exclusive
                and len(self.streams) < 998):
            if stream_id in self.streams:
                raise priority.DuplicateStreamError(f"Stream {stream_id} already in tree")
            self.streams[stream_id] = None
            self.ready[stream_id] = None
            return
        (tree or self._to_tree()).insert_stream(stream_id, depends_on, weight, exclusive)

    def reprioritize(self, stream_id: int, depends_on: int | None = None, weight: int = 16,
                     exclusive: bool = False) -> None:
        if not self._parent_known(depends_on):  # as in insert_stream
            depends_on, weight, exclusive = None, 16, False
        if self.tree is None and not depends_on and weight == 16 and not exclusive:
            if stream_id not in self.streams:
                raise priority.MissingStreamError(f"Stream {stream_id} not in tree")
            return  # the default priority it has
        (self.tree or self._to_tree()).reprioritize(stream_id, depends_on, weight, exclusive)

    def remove_stream(self, stream_id: int) -> None:
        if self.tree is not None:
            self.tree.remove_stream(stream_id)
            return
        if stream_id not in self.streams:
            raise priority.MissingStreamError(f"Stream {stream_id} not in tree")
        del self.streams[stream_id]
        self.ready.pop(stream_id, None)

    def block(self, stream_id: int) -> None:
        if self.tree is not None:
            self.tree.block(stream_id)
        elif stream_id in self.streams:
            self.ready.pop(stream_id, None)
        else:
            raise priority.MissingStreamError(f"Stream {stream_id} not in tree")

    def unblock(self, stream_id: int) -> None:
        if self.tree is not None:
            self.tree.unblock(stream_id)
        elif stream_id in self.streams:
            self.ready.setdefault(stream_id, None)
        else:
            raise priority.MissingStreamError(f"Stream {stream_id} not in tree")

    def __contains__(self, stream_id: int) -> bool:
        if self.tree is not None:
            return stream_id in self.tree._streams
        return stream_id in self.streams

    def __len__(self) -> int:
        """Streams scheduled (open or placeholders), the root not counted."""
        if self.tree is not None:
            return len(self.tree._streams) - 1
        return len(self.streams)

    def __iter__(self) -> LazyPriority:
        return self

    def __next__(self) -> int:
        if self.tree is not None:
            return next(self.tree)
        ready = self.ready
        if not ready:
            raise priority.DeadlockError("No unblocked streams to schedule.")
        stream_id = next(iter(ready))
        del ready[stream_id]  # to the back of the round
        ready[stream_id] = None
        return stream_id


class TrailersH2Connection(H2Connection):
    """Twisted's server ``H2Connection`` able to send response trailers."""

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.priority = LazyPriority()
        self.conn = _TrailingH2State(self.conn.config)
        self.conn.on_drained = self._drained
        #: streams the send loop blocked for want of flow-control window
        #: (unblocked by :meth:`dataReceived` once a WINDOW_UPDATE or SETTINGS
        #: opens it): with them unblocked the loop ran every reactor turn
        self._window_blocked: set[int] = set()
        #: (the lean route's connection tuple, see _lean_info), made at the
        #: first request; None before
        self._lean: tuple[Any] | None = None
        #: streams served on the lean route
        self.lean_streams = 0

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._window_blocked:
            self._reopen_windows()

    def _reopen_windows(self) -> None:
        """Unblock the window-blocked streams whose window opened (a
        WINDOW_UPDATE on the stream or the connection, a larger
        SETTINGS_INITIAL_WINDOW_SIZE) and wake the send loop."""
        opened = False
        for stream_id in list(self._window_blocked):
            if stream_id not in self._outboundStreamQueues:
                self._window_blocked.discard(stream_id)
            elif self.conn.local_flow_control_window(stream_id) > 0:
                self._window_blocked.discard(stream_id)
                self.priority.unblock(stream_id)
                opened = True
        if opened and self._sendingDeferred is not None:
            d, self._sendingDeferred = self._sendingDeferred, None
            d.callback(None)

    def _handlePriorityUpdate(self, event: Any) -> None:
        """Twisted's, but a PRIORITY frame that would add a node for a stream
        not open beyond :data:`IDLE_PRIORITY_NODES` of them is ignored
        (priority signals are advisory, RFC 9113 5.3): such nodes are never
        removed, each slows every scheduling step, and the tree's 1,000-node
        limit would fail the connection."""
        sched = self.priority
        if (event.stream_id not in self.streams and event.stream_id not in sched
                and len(sched) - len(self.streams) >= IDLE_PRIORITY_NODES):
            return
        super()._handlePriorityUpdate(event)

    def _lean_info(self) -> tuple[Any, ...] | None:
        """The connection's tuple for the lean route (:mod:`nbgateway.proxy.h2_lean`):
        (peer, its host as text, local address, TLS?, the clock, the site
        resource's ``fast_route``); None when the site's resource is not
        served by the HTTP/1.1 fast path (or the site turned it off): every
        stream then takes Twisted's route.  Made at the first request."""
        site = self.site
        resource = getattr(site, "resource", None)
        fast_route = getattr(resource, "fast_route", None)
        info: tuple[Any, ...] | None = None
        if (getattr(site, "fast", False) and fast_route is not None
                and getattr(resource, "fast_protocol", None) is not None
                and self.transport is not None):
            peer = self.transport.getPeer()
            info = (peer, str(getattr(peer, "host", "") or ""), self.transport.getHost(),
                    self._isSecure(), self._reactor.seconds, fast_route)
        self._lean = (info,)
        return info

    def _requestReceived(self, event: Any) -> None:
        # Twisted's steps, with its stream class replaced by a lean-route
        # stream (h2_lean) for a bodiless GET/HEAD the fast path's resource
        # takes, else by GatewayH2Stream (the request head filled in one loop)
        stream_id = event.stream_id
        if event.stream_ended is not None:
            lean = self._lean
            info = lean[0] if lean is not None else self._lean_info()
            if info is not None:
                stream = lean_stream(self, event, info)
                if stream is not None:
                    self.streams[stream_id] = stream
                    self._outboundStreamQueues[stream_id] = deque()
                    try:
                        self.priority.insert_stream(stream_id)
                    except priority.DuplicateStreamError:
                        pass  # a PRIORITY frame came first and scheduled it
                    else:
                        self.priority.block(stream_id)
                    self.lean_streams += 1
                    return
        self.streams[stream_id] = GatewayH2Stream(
            stream_id, self, event.headers, self.requestFactory, self.site, self.factory)
        self._streamCleanupCallbacks[stream_id] = Deferred()
        self._outboundStreamQueues[stream_id] = deque()
        try:
            self.priority.insert_stream(stream_id)
        except priority.DuplicateStreamError:
            pass  # a PRIORITY frame came first and scheduled it
        else:
            self.priority.block(stream_id)
        if event.stream_ended is not None:
            return
        # A gRPC call whose body follows is dispatched at its headers, as an
        # HTTP/1.1 streamed body is (not at its first DATA frame): in a
        # bidirectional call the server may speak first.
        stream = self.streams.get(event.stream_id)
        request = getattr(stream, "_request", None)
        dispatch = getattr(request, "dispatch_early", None)
        if (dispatch is None or getattr(request, "body_stream", None) is None
                or getattr(request, "_dispatched", True)):
            return
        ctype = request.requestHeaders.getRawHeaders(b"content-type") or [b""]
        if ctype[0].lower().startswith(b"application/grpc"):
            dispatch(stream.command, stream.path, b"HTTP/2")

    def writeDataToStream(self, streamID: int, data: bytes) -> None:
        # Twisted's steps (queue the chunk; unblock the stream and wake the
        # send loop when the window is open; tell the stream when the
        # remaining outbound window is spent), the window read once: nothing
        # in between sends (the loop runs at the end of the turn)
        state = self.conn
        queued = state.queued
        total = queued[streamID] = queued.get(streamID, 0) + len(data)
        self._outboundStreamQueues[streamID].append(data)
        window = state.local_flow_control_window(streamID)
        if window > 0:
            self.priority.unblock(streamID)
            if self._sendingDeferred is not None:
                d, self._sendingDeferred = self._sendingDeferred, None
                d.callback(streamID)
        if min(window, STREAM_QUEUE_HIGH) - total <= 0:  # remainingOutboundWindow
            self.streams[streamID].flowControlBlocked()

    def remainingOutboundWindow(self, streamID: int) -> int:
        window = min(self.conn.local_flow_control_window(streamID), STREAM_QUEUE_HIGH)
        return window - self.conn.queued.get(streamID, 0)

    def _sendPrioritisedData(self, *args: Any) -> None:
        """Twisted's send loop (same priority, flow-control and end-of-stream
        handling), but up to :data:`FRAMES_PER_TURN` frames per reactor turn
        in one write instead of one frame per turn: a long response costs a
        fraction of the reactor turns and socket writes.  Pending frames are
        written before a Twisted-route stream's cleanup runs (its callbacks
        may write); a lean-route stream (:mod:`nbgateway.proxy.h2_lean`) has
        no cleanup Deferred, and the streams ending in one run leave in its
        one write.

        Woken by new data or a stream's end, it runs once at the end of the
        reactor turn (:meth:`_wake`), not inside the first ``write``: what
        the turn queued on all streams goes out in one run of it, and a
        response's last DATA frame carries ``END_STREAM`` when the stream's
        end is queued right behind it (no trailers) instead of an empty DATA
        frame of its own."""
        if not self._stillProducing:
            return
        for sent in range(FRAMES_PER_TURN):
            try:
                stream = next(self.priority)
            except priority.DeadlockError:
                self._flush_frames()
                assert self._sendingDeferred is None
                self._sendingDeferred = Deferred()
                self._sendingDeferred.addCallback(self._wake)
                return
            if self._consumerBlocked is not None:
                self._flush_frames()
                self._consumerBlocked.addCallback(self._sendPrioritisedData)
                return
            if sent == 0:
                self.resetTimeout()
            queue = self._outboundStreamQueues[stream]
            frame = queue.popleft()
            if frame is _END_STREAM_SENTINEL:
                self.conn.end_stream(stream)
                if stream in self._streamCleanupCallbacks:
                    self._flush_frames()  # its cleanup's callbacks may write
                self._requestDone(stream)
                if not self._stillProducing:
                    return
                continue
            max_size = min(self.conn.max_outbound_frame_size,
                           self.conn.local_flow_control_window(stream))
            if len(frame) > max_size:
                queue.appendleft(frame[max_size:])
                frame = frame[:max_size]
            elif (frame and len(queue) == 1 and queue[0] is _END_STREAM_SENTINEL
                  and stream not in self.conn.pending_trailers):
                self.conn.send_data(stream, frame, end_stream=True)
                queue.popleft()
                if stream in self._streamCleanupCallbacks:
                    self._flush_frames()  # its cleanup's callbacks may write
                self._requestDone(stream)
                if not self._stillProducing:
                    return
                continue
            if frame:
                self.conn.send_data(stream, frame)
            if not queue:
                self.priority.block(stream)
            if self.remainingOutboundWindow(stream) <= 0:
                self.streams[stream].flowControlBlocked()
            if not frame:
                if max_size <= 0:  # no window: wait for the client to open it
                    self.priority.block(stream)
                    self._window_blocked.add(stream)
                    continue
                break  # an empty write: the rest next turn, as Twisted does
        self._flush_frames()
        self._reactor.callLater(0, self._sendPrioritisedData)

    def _wake(self, _stream: Any = None) -> None:
        """New data or a stream's end while the loop waited: run it at the
        end of this reactor turn (once: the waiting Deferred is gone until
        the loop waits again)."""
        self._reactor.callLater(0, self._sendPrioritisedData)

    def _flush_frames(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _drained(self, streamID: int) -> None:
        stream = self.streams.get(streamID)
        if stream is not None:
            stream.windowUpdated()  # resumes a paused producer if there is room

    def _requestDone(self, streamID: int) -> None:
        # Twisted's steps; a lean-route stream has no cleanup Deferred
        self._window_blocked.discard(streamID)
        self.conn.pending_trailers.pop(streamID, None)
        self.conn.queued.pop(streamID, None)
        del self._outboundStreamQueues[streamID]
        self.priority.remove_stream(streamID)
        del self.streams[streamID]
        cleanup = self._streamCleanupCallbacks.pop(streamID, None)
        if cleanup is not None:
            cleanup.callback(streamID)

    def connectionLost(self, reason: Any, _cancelTimeouts: bool = True) -> None:
        self.conn.pending_trailers.clear()
        self.conn.queued.clear()
        self._window_blocked.clear()
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
