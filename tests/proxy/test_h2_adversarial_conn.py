"""Adversarial request header blocks through the gateway's HTTP/2 server
connection (:class:`~nbgateway.proxy.h2trailers.TrailersH2Connection`, its
HPACK decoder, its one-pass inbound check and ``GatewayH2Stream``'s head
intake) on a test transport, each compared with a plain ``h2`` server
connection (stock ``hpack``, ``h2``'s own validation) fed the same bytes:

- identity and forwarding headers a client sends (any case, ``_`` for
  ``-``, literal / Huffman / never indexed / indexed after being added to
  the table / name from the dynamic table, split across CONTINUATION frames
  at every byte) reach the request with a name the upstream header builder
  (:func:`~nbgateway.proxy.headers.prepare_upstream_headers`) strips, and
  never reach the upstream headers;
- upper-case names, CR/LF/NUL in names or values, connection-specific
  fields, ``te`` other than ``trailers`` are refused: GOAWAY with h2's error
  code, no request;
- malformed and random blocks (the generator of
  ``test_h2_adversarial_hpack``) end the connection with the GOAWAY code h2
  sends, or give the same request head, and never raise out of
  ``dataReceived`` into the reactor."""

from __future__ import annotations

import itertools
import random
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
from hpack.struct import NeverIndexedHeaderTuple
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from nbgateway.proxy.h2_hpack import encode_integer, huffman_encode
from nbgateway.proxy.h2trailers import TrailersH2Connection
from nbgateway.proxy.headers import is_protected, prepare_upstream_headers
from nbgateway.routes.identity import Identity

from .test_h2_adversarial_hpack import _block

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: the request's pseudo-header fields (static-table indexed: :method GET,
#: :scheme https, :path /) and :authority as a literal not indexed
BASE = b"\x82\x87\x84\x01\x09a.example"


class _Record(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def render(self, request: Any) -> bytes:
        self.seen.append(request.requestHeaders)
        return b"ok"


def _frames(data: bytes) -> list[Frame]:
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


def _headers_frames(sid: int, block: bytes, cuts: list[int] = ()) -> bytes:  # type: ignore[assignment]
    """A HEADERS frame (END_STREAM) and CONTINUATION frames, the block cut
    at ``cuts``."""
    bounds = [0, *cuts, len(block)]
    pieces = [block[a:b] for a, b in itertools.pairwise(bounds)]
    first = HeadersFrame(sid, pieces[0])
    first.flags.add("END_STREAM")
    frames: list[Frame] = [first]
    frames += [ContinuationFrame(sid, piece) for piece in pieces[1:]]
    frames[-1].flags.add("END_HEADERS")
    return b"".join(f.serialize() for f in frames)


class Outcome:
    """What a connection made of the bytes: the requests' regular fields,
    the GOAWAY / RST_STREAM codes it sent, and an exception it raised."""

    def __init__(self) -> None:
        self.requests: list[list[tuple[bytes, bytes]]] = []
        self.goaway: int | None = None
        self.resets: list[tuple[int, int]] = []
        self.raised: BaseException | None = None

    def key(self) -> tuple[Any, ...]:
        return (self.requests, self.goaway, self.resets, type(self.raised))


def _gateway(chunks: list[bytes]) -> tuple[Outcome, _Record]:
    clock = Clock()
    conn = TrailersH2Connection(clock)
    record = _Record()
    site = server.Site(record)
    conn.site, conn.requestFactory, conn.factory = site, site.requestFactory, site
    transport = StringTransport()
    conn.makeConnection(transport)
    out = Outcome()
    try:
        for chunk in chunks:
            conn.dataReceived(chunk)
            clock.advance(0)
    except Exception as err:  # it would reach the reactor
        out.raised = err
    for frame in _frames(transport.value()):
        if isinstance(frame, GoAwayFrame):
            out.goaway = frame.error_code
        elif isinstance(frame, RstStreamFrame):
            out.resets.append((frame.stream_id, frame.error_code))
    out.requests = [[(n.lower(), v) for n, vs in h.getAllRawHeaders() for v in vs
                     if n.lower() != b"host"] for h in record.seen]
    conn.connectionLost(None)
    return out, record


def _reference(chunks: list[bytes]) -> Outcome:
    """A plain h2 server connection: the requests it accepted, the code it
    would send."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    out = Outcome()
    try:
        for chunk in chunks:
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.RequestReceived):
                    fields: list[tuple[bytes, bytes]] = []
                    for name, value in event.headers:
                        if not name.startswith(b":") and name != b"host":
                            fields.append((name, value))
                    out.requests.append(fields)
    except h2.exceptions.ProtocolError as err:
        out.goaway = err.error_code
    for frame in _frames(conn.data_to_send()):
        if isinstance(frame, RstStreamFrame):
            out.resets.append((frame.stream_id, frame.error_code))
    return out


def _both(chunks: list[bytes]) -> tuple[Outcome, _Record]:
    got, record = _gateway(chunks)
    want = _reference(chunks)
    assert got.raised is None, got.raised
    # the gateway's head merges repeated names in first-seen order (Headers)
    assert got.goaway == want.goaway
    assert got.resets == want.resets
    assert [sorted(r) for r in got.requests] == [sorted(r) for r in want.requests]
    return got, record


def _lit(data: bytes, huffman: bool) -> bytes:
    if huffman:
        data = huffman_encode(data)
    head = encode_integer(len(data), 7)
    if huffman:
        head[0] |= 0x80
    return bytes(head) + data


def _upstream(headers: Any, identity: Identity | None) -> dict[str, list[bytes]]:
    out = prepare_upstream_headers(
        headers, host_header="a.example", target_netloc="up:80", pass_host_header=True,
        identity=identity, client_ip="100.64.0.9", over_tls=True)
    return {n.decode().lower(): vs for n, vs in out.getAllRawHeaders()}


SPOOFS = [b"x-netbird-user", b"x-netbird-groups", b"x_netbird_user", b"x-netbird-jwt-assertion",
          b"x-netbird-anything", b"x-forwarded-for", b"x-real-ip", b"forwarded"]
IDENTITY = Identity(user_id="u1", email="alice@example.com", group_ids=("g1",),
                    group_names=("devs",))


def _spoof_blocks(name: bytes) -> list[list[bytes]]:
    """Blocks (one per request on one connection) carrying ``name: root``
    in each HPACK representation."""
    value = b"root@example.com"
    out = []
    for huffman in (False, True):
        for flag in (b"\x40", b"\x00", b"\x10"):  # incremental, without, never
            out.append([BASE + flag + _lit(name, huffman) + _lit(value, huffman)])
    # added to the table by the first request, indexed (62) by the second,
    # its name (dynamic index 62) with another value by the third
    add = BASE + b"\x40" + _lit(name, True) + _lit(value, False)
    out.append([add, BASE + b"\xbe", BASE + b"\x7e" + _lit(b"admin", True)])
    return out


@pytest.mark.parametrize("name", SPOOFS)
def test_spoofed_identity_never_reaches_the_upstream(name: bytes) -> None:
    for blocks in _spoof_blocks(name):
        wire = [PREFACE + SettingsFrame(0).serialize()]
        wire += [_headers_frames(1 + 2 * i, b) for i, b in enumerate(blocks)]
        got, record = _both([b"".join(wire)])
        assert got.goaway is None and len(record.seen) == len(blocks)
        for headers in record.seen:
            assert any(is_protected(n) for n, _ in headers.getAllRawHeaders())
            for identity in (None, IDENTITY):
                up = _upstream(headers, identity)
                assert b"root@example.com" not in repr(up).encode()
                assert b"admin" not in repr(up).encode()
                assert up.get("x-netbird-user") == (
                    [b"alice@example.com"] if identity else None)
                assert not [k for k in up if "_" in k]


@pytest.mark.parametrize("huffman", [False, True])
def test_spoofed_identity_split_across_continuation_frames(huffman: bool) -> None:
    """The block cut at every byte (HEADERS + one CONTINUATION), and into
    one-byte CONTINUATION frames: the same request, stripped upstream."""
    block = (BASE + b"\x40" + _lit(b"x-netbird-user", huffman) + _lit(b"root", huffman)
             + b"\x10" + _lit(b"x-netbird-groups", huffman) + _lit(b"admins", huffman))
    cut_sets = [[c] for c in range(1, len(block))] + [list(range(1, len(block)))]
    for cuts in cut_sets:
        frames = _headers_frames(1, block, cuts)
        got, record = _both([PREFACE + SettingsFrame(0).serialize() + frames])
        assert len(record.seen) == 1 and got.goaway is None
        up = _upstream(record.seen[0], None)
        assert "x-netbird-user" not in up and "x-netbird-groups" not in up


BAD_FIELDS = [
    (b"X-NetBird-User", b"root"), (b"x-netbird-User", b"root"),
    (b"x-a", b"a\r\nx-netbird-user: root"), (b"x-a", b"a\nb"), (b"x-a", b"a\rb"),
    (b"x-a", b"a\x00b"), (b"x-a\r\nx-netbird-user", b"root"), (b"x-a\x00", b"v"),
    (b"x a", b"v"), (b"x-a:", b"v"), (b":x-netbird-user", b"root"), (b"", b"v"),
    (b"connection", b"close"), (b"keep-alive", b"1"), (b"proxy-connection", b"x"),
    (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"), (b"te", b"gzip"),
    (b"x-a", b" padded"), (b"x-a", b"padded\t"), (b"host", b"other.example"),
]


@pytest.mark.parametrize(("name", "value"), BAD_FIELDS)
@pytest.mark.parametrize("huffman", [False, True])
def test_refused_fields_end_the_connection_as_h2(name: bytes, value: bytes,
                                                 huffman: bool) -> None:
    block = BASE + b"\x00" + _lit(name, huffman) + _lit(value, huffman)
    got, record = _both([PREFACE + SettingsFrame(0).serialize() + _headers_frames(1, block)])
    assert got.goaway == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert record.seen == []


@pytest.mark.parametrize("seed", range(6))
def test_random_blocks_end_or_pass_as_h2(seed: int) -> None:
    """Adversarial blocks after a valid request head: the gateway sends
    the GOAWAY code h2 sends (COMPRESSION_ERROR / PROTOCOL_ERROR /
    ENHANCE_YOUR_CALM) or serves the same request, and never raises."""
    rng = random.Random(3000 + seed)
    codes: dict[Any, int] = {}
    for _ in range(40):
        wire = [PREFACE + SettingsFrame(0).serialize()]
        for i in range(rng.randrange(1, 4)):
            r = rng.random()
            if r < 0.25:  # a valid request (the table carries over)
                block = rng.choice(_spoof_blocks(rng.choice(SPOOFS)))[0]
            else:
                block = (BASE if r < 0.8 else b"") + _block(rng, 0, 4096)
            cuts = sorted(rng.sample(range(1, len(block)), min(2, len(block) - 1))) \
                if len(block) > 2 and rng.random() < 0.3 else []
            wire.append(_headers_frames(1 + 2 * i, block, cuts))
        got, _ = _both([b"".join(wire)])
        codes[got.goaway] = codes.get(got.goaway, 0) + 1
    assert None in codes and h2.errors.ErrorCodes.PROTOCOL_ERROR in codes, codes


def test_hpack_bomb_ends_the_connection() -> None:
    """One 4 kB entry and 200 one-byte references to it (800 kB of fields
    from 4 kB sent): ENHANCE_YOUR_CALM, as h2, before any request."""
    block = BASE + b"\x40" + _lit(b"x-a", False) + _lit(b"b" * 4000, False) + b"\xbe" * 200
    got, record = _both([PREFACE + SettingsFrame(0).serialize()
                         + _headers_frames(1, block, list(range(4096, len(block), 16)))])
    assert got.goaway == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert record.seen == []
    assert isinstance(hpack.OversizedHeaderListError(), hpack.HPACKDecodingError)


#: response fields an upstream (a tunnel peer) may hand the gateway to relay
RESPONSE_FIELDS: list[Any] = [
    (b"Content-Type", b"text/html"), (b"ETag", b' "1" '), (b"connection", b"close"),
    (b"keep-alive", b"5"), (b"Set-Cookie", b"a=1"), (b"cookie", b"short"),
    (b"authorization", b"secret"), (b"x-big", b"v" * 5000), (b"te", b"gzip"),
    (b"te", b"trailers"), (b":path", b"/"), (b"", b"v"), ("x-unicode", "\u00e9t\u00e9"),
    (b"x-netbird-user", b"relayed"), (b"X-Mixed-Case", b"\tpadded\t"),
    NeverIndexedHeaderTuple(b"x-secret", b"s"), (b"x-n", b"1"), (b"x-n", b"2"),
]


@pytest.mark.parametrize("seed", range(3))
def test_response_blocks_keep_the_client_table_in_step(seed: int) -> None:
    """Responses (refused ones among them: ``te: gzip``, a pseudo-header
    after a field, an empty name) on many streams while the client changes
    its SETTINGS_HEADER_TABLE_SIZE: after every block sent the gateway's
    encoder table is the client's decoder table (a refused block added
    nothing to it), and
    the client decodes every response as the normalised fields."""
    from nbgateway.proxy.h2trailers import _response_block, _TrailingH2State

    rng = random.Random(4000 + seed)
    server = _TrailingH2State(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    refused = sent = 0

    def pump() -> list[Any]:
        server.receive_data(client.data_to_send())
        return client.receive_data(server.data_to_send())

    pump()
    for sid in range(1, 400, 2):
        # (only with no size change pending: several changes between two
        # blocks are test_h2_adversarial_size_changes' subject)
        if rng.random() < 0.1 and not server.encoder.table_size_changes:
            size = rng.choice((0, 64, 256, 4096, 65536))
            client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: size})
            pump()
            pump()
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                  (b":authority", b"a.example"), (b":path", b"/")],
                            end_stream=True)
        pump()
        fields = [(b":status", b"200"), *rng.sample(RESPONSE_FIELDS, rng.randrange(0, 6))]
        if rng.random() < 0.1:
            fields.append((b":status", b"204"))
        try:
            server.send_headers(sid, fields, end_stream=True)
        except h2.exceptions.ProtocolError:
            refused += 1
            server.reset_stream(sid)
            assert [e for e in pump() if isinstance(e, h2.events.ResponseReceived)] == []
        else:
            sent += 1
            events = [e for e in pump() if isinstance(e, h2.events.ResponseReceived)]
            block = [(bytes(f[0]), bytes(f[1])) for f in _response_block(fields).fields]
            want = [f for f in block if f[0] != b"cookie"]  # the client moves cookies last
            cookies = [v for n, v in block if n == b"cookie"]
            if cookies:
                want.append((b"cookie", b"; ".join(cookies)))
            assert [list(map(tuple, e.headers)) for e in events] == [want]
            # (a size change takes effect in the client's table with the
            # next block, so the tables are compared after one)
            assert (list(server.encoder.header_table.dynamic_entries)
                    == list(client.decoder.header_table.dynamic_entries)), sid
    assert refused > 10 and sent > 50
