"""The HTTP/2 server's one-pass request header check
(:func:`nbgateway.proxy.h2trailers.check_request_headers`) accepts, rewrites
and rejects exactly what ``h2``'s inbound normalisation + validation do, and
the gateway's HTTP/2 connection uses it (a bad block still ends the
connection with ``GOAWAY`` PROTOCOL_ERROR)."""

from __future__ import annotations

import random
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from h2.exceptions import ProtocolError
from h2.utilities import (
    HeaderValidationFlags,
    normalize_inbound_headers,
    utf8_encode_headers,
    validate_headers,
)
from hpack.struct import HeaderTuple
from hyperframe.frame import Frame, GoAwayFrame

from nbgateway.proxy.h2trailers import (
    _KNOWN,
    _KNOWN_NAMES,
    _PLAIN_OUT,
    _checked_request,
    _CheckedStream,
    _TrailingH2State,
    check_request_headers,
    prepare_response_headers,
)

REQUEST = HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=False,
                                is_push_promise=False)
TRAILER = HeaderValidationFlags(is_client=False, is_trailer=True, is_response_header=False,
                                is_push_promise=False)

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app.example"),
        (b":path", b"/index.html?q=1"), (b"user-agent", b"Mozilla/5.0 (X11)"),
        (b"accept", b"*/*")]


def h2_result(headers: list[tuple[bytes, bytes]], flags: HeaderValidationFlags) -> Any:
    """h2's own pipeline (what the stream ran before): a list or 'error'."""
    block = [HeaderTuple(n, v) for n, v in headers]
    try:
        return list(validate_headers(normalize_inbound_headers(block, flags), flags))
    except ProtocolError:
        return "error"


def ours(headers: list[tuple[bytes, bytes]], flags: HeaderValidationFlags) -> Any:
    block = [HeaderTuple(n, v) for n, v in headers]
    try:
        return check_request_headers(block, flags)
    except ProtocolError:
        return "error"


def same(headers: list[tuple[bytes, bytes]], flags: HeaderValidationFlags) -> Any:
    want, got = h2_result(headers, flags), ours(headers, flags)
    assert got == want, headers
    if want != "error":  # same field types too (the joined cookie is never indexed)
        assert [type(h) for h in got] == [type(h) for h in want], headers
    return got


CASES = [
    BASE,
    [*BASE, (b"cookie", b"a=1"), (b"x-b", b"2"), (b"cookie", b"b=2")],
    [(b"cookie", b"a=1"), *BASE],  # a cookie before the pseudo-header fields
    [*BASE, (b"cookie", b"")], [*BASE, (b"cookie", b""), (b"cookie", b"")],
    [*BASE, (b"cookie", b"a=1 "), (b"cookie", b"b=2")],  # inner space: joined, fine
    [*BASE, (b"cookie", b"a=1"), (b"cookie", b"b=2 ")],  # trailing space after joining
    [*BASE, (b"cookie", b"a\r=1")],
    [*BASE, (b"x-empty", b"")],
    [*BASE, (b"X-Upper", b"1")], [*BASE, (b"x:colon", b"1")], [*BASE, (b"x y", b"1")],
    [*BASE, (b"x\x7f", b"1")], [*BASE, (b"x\x80", b"1")], [*BASE, (b"", b"1")],
    [*BASE, (b"x-v", b"a\x00b")], [*BASE, (b"x-v", b"a\nb")], [*BASE, (b"x-v", b"a\rb")],
    [*BASE, (b"x-v", b" a")], [*BASE, (b"x-v", b"a\t")], [*BASE, (b"x-v", b"a b\x01\x7f\xff")],
    [*BASE, (b"te", b"trailers")], [*BASE, (b"te", b"TRAILERS")], [*BASE, (b"te", b"gzip")],
    [*BASE, (b"connection", b"close")], [*BASE, (b"keep-alive", b"1")],
    [*BASE, (b"transfer-encoding", b"chunked")], [*BASE, (b"upgrade", b"h2c")],
    [*BASE, (b"proxy-connection", b"x")],
    [*BASE, (b":method", b"POST")], [*BASE, (b":status", b"200")], [*BASE, (b":foo", b"1")],
    [*BASE[:1], (b"x", b"1"), *BASE[1:]],  # pseudo after regular
    [h for h in BASE if h[0] != b":method"], [h for h in BASE if h[0] != b":path"],
    [h for h in BASE if h[0] != b":scheme"], [h for h in BASE if h[0] != b":authority"],
    [h for h in BASE if h[0] != b":authority"] + [(b"host", b"app.example")],
    [*BASE, (b"host", b"app.example")], [*BASE, (b"host", b"other")],
    [*BASE, (b"host", b"app.example"), (b"host", b"app.example")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"")],
    [(b":method", b"CONNECT"), (b":authority", b"a:443")],
    [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],
    [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
     (b":path", b"/ws"), (b":authority", b"a")],
    [*BASE, (b":protocol", b"websocket")],
    [*BASE, (b":pa:th", b"/")], [(b"::method", b"GET"), *BASE[1:]],
]
TRAILERS = [
    [(b"grpc-status", b"0"), (b"grpc-message", b"")], [(b":path", b"/")],
    [(b"host", b"a"), (b"host", b"b")], [(b"x", b" a")], [(b"Bad", b"1")],
    [(b"cookie", b"a"), (b"cookie", b"b")], [(b"te", b"gzip")], [],
]


@pytest.mark.parametrize("headers", CASES)
def test_request_blocks_as_h2(headers: list[tuple[bytes, bytes]]) -> None:
    same(headers, REQUEST)


@pytest.mark.parametrize("headers", TRAILERS)
def test_trailer_blocks_as_h2(headers: list[tuple[bytes, bytes]]) -> None:
    same(headers, TRAILER)


def test_cases_cover_both_outcomes() -> None:
    got = [ours(h, REQUEST) for h in CASES]
    assert 10 < sum(r == "error" for r in got) < len(CASES) - 8


def test_random_blocks_as_h2() -> None:
    """Seeded random blocks: names and values from alphabets rich in the
    bytes the rules are about."""
    rng = random.Random(20)
    name_bytes = b"ab-:Xt\x00 \x7f\x80"
    value_bytes = b"a ;\t\r\n\x00\xff"
    names = [b":method", b":path", b":scheme", b":authority", b":status", b"host",
             b"cookie", b"te", b"connection", b"x", b"x", b"y", b"cookie"]
    errors = 0
    for _ in range(3000):
        block = []
        for _ in range(rng.randrange(0, 7)):
            if rng.random() < 0.85:
                name = rng.choice(names)
            else:
                name = bytes(rng.choice(name_bytes) for _ in range(rng.randrange(0, 4)))
            value = bytes(rng.choice(value_bytes) for _ in range(rng.randrange(0, 4)))
            if rng.random() < 0.6:
                value = rng.choice([b"GET", b"CONNECT", b"trailers", b"a", b"/"])
            block.append((name, value))
        if rng.random() < 0.5:
            block = BASE + block
        errors += same(block, rng.choice([REQUEST, TRAILER])) == "error"
    assert 300 < errors < 2800, errors  # both outcomes exercised (~290 valid)


def _client(**options: Any) -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, **options))
    client.initiate_connection()
    return client


def _server() -> _TrailingH2State:
    server = _TrailingH2State(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.data_to_send()
    return server


def test_the_gateways_streams_use_the_check() -> None:
    server, client = _server(), _client(split_outbound_cookies=True)
    client.send_headers(1, [*BASE, (b"cookie", b"a=1; b=2")], end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert type(server.streams[1]) is _CheckedStream
    got = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    # the client split the cookie; the server joined it again, last
    assert got.headers[-1] == (b"cookie", b"a=1; b=2")
    assert got.headers[:len(BASE)] == BASE


@pytest.mark.parametrize("bad", [(b"X-Upper", b"1"), (b"x-v", b"a\x00b"), (b"x-v", b"a "),
                                 (b"connection", b"close"), (b"host", b"other")])
def test_a_bad_block_ends_the_connection_with_goaway(bad: tuple[bytes, bytes]) -> None:
    server = _server()
    client = _client(validate_outbound_headers=False, normalize_outbound_headers=False)
    client.send_headers(1, [*BASE, bad], end_stream=True)
    with pytest.raises(ProtocolError):
        server.receive_data(client.data_to_send())
    out, frames = server.data_to_send(), []
    while out:
        frame, length = Frame.parse_frame_header(memoryview(out[:9]))
        frame.parse_body(memoryview(out[9:9 + length]))
        frames.append(frame)
        out = out[9 + length:]
    goaway = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [f.error_code for f in goaway] == [h2.errors.ErrorCodes.PROTOCOL_ERROR]


RESPONSE = HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=True,
                                 is_push_promise=False)
SENT_TRAILER = HeaderValidationFlags(is_client=False, is_trailer=True, is_response_header=False,
                                     is_push_promise=False)
OUT_CASES = [
    [(b":status", b"200"), (b"Content-Type", b"text/html"), (b"Content-Length", b"3")],
    [(b":status", b"200"), (b"ETag", b' "1" '), (b" Server ", b"nginx\t"),
     (b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5"),
     (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c")],
    [(b":status", b"200"), (b"Authorization", b"Basic x"), (b"proxy-authorization", b"y"),
     (b"Cookie", b"short=1"), (b"cookie", b"a-rather-long-cookie=value-1234")],
    [(b":status", b"200"), (b"Set-Cookie", b"a=1"), (b"TE", b"trailers")],
    [(b":status", b"200"), (b"te", b"gzip")], [(b"content-type", b"x")],
    [(b":status", b"200"), (b":status", b"204")], [(b":status", b"200"), (b":path", b"/")],
    [(b"x", b"1"), (b":status", b"200")], [(b":status", b"200"), (b":bogus", b"1")],
    [(b":status", b"200"), (b"", b"")], [(b":status", b"200"), (b"x-empty", b"")],
]
OUT_TRAILERS = [[(b"grpc-status", b"0"), (b"Grpc-Message", b" ok ")], [(b":status", b"200")],
                [(b"te", b"gzip")], [(b"Connection", b"close"), (b"x", b"1")]]


def h2_outbound(headers: list[Any], flags: HeaderValidationFlags) -> Any:
    from h2.utilities import normalize_outbound_headers, validate_outbound_headers

    try:
        return list(validate_outbound_headers(
            normalize_outbound_headers(iter(headers), flags, False), flags))
    except (ProtocolError, IndexError):  # IndexError: h2 on an empty name
        return "error"


def ours_outbound(headers: list[Any], flags: HeaderValidationFlags) -> Any:
    try:
        return prepare_response_headers(iter(headers), flags)
    except ProtocolError:
        return "error"


@pytest.mark.parametrize(("headers", "flags"), [(h, RESPONSE) for h in OUT_CASES]
                         + [(h, SENT_TRAILER) for h in OUT_TRAILERS])
def test_response_blocks_as_h2(headers: list[Any], flags: HeaderValidationFlags) -> None:
    for block in (headers, [HeaderTuple(n, v) for n, v in headers]):
        want, got = h2_outbound(block, flags), ours_outbound(block, flags)
        assert got == want
        if want != "error":
            assert [type(h) for h in got] == [type(h) for h in want]


def _exchange(server: Any, client: Any, sid: int, headers: list[tuple[bytes, bytes]],
              trailers: list[tuple[bytes, bytes]]) -> bytes:
    client.send_headers(sid, BASE, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(sid, headers)
    server.send_data(sid, b"abc")
    if isinstance(server, _TrailingH2State):
        server.pending_trailers[sid] = trailers
        server.end_stream(sid)
    else:
        server.send_headers(sid, trailers, end_stream=True)
    return server.data_to_send()


@pytest.mark.parametrize("headers", OUT_CASES[:4])
def test_the_same_frames_as_h2_on_the_wire(headers: list[tuple[bytes, bytes]]) -> None:
    """The gateway's connection sends byte for byte what plain h2 sends
    (HPACK state included: three responses with trailers)."""
    ours_conn, theirs = _server(), h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None))
    theirs.initiate_connection()
    theirs.data_to_send()
    ours_client, their_client = _client(), _client()
    trailers = [(b"grpc-status", b"0"), (b"Grpc-Message", b" fine ")]
    for sid in (1, 3, 5):
        mine = _exchange(ours_conn, ours_client, sid, headers, trailers)
        assert mine == _exchange(theirs, their_client, sid, headers, trailers)
        assert type(ours_conn.streams[sid]) is _CheckedStream
        got = [e for e in ours_client.receive_data(mine)
               if isinstance(e, h2.events.TrailersReceived)]
        assert [e.headers for e in got] == [[(b"grpc-status", b"0"), (b"grpc-message", b"fine")]]


def _random_blocks(seed: int, count: int) -> list[tuple[list[tuple[bytes, bytes]], Any]]:
    rng = random.Random(seed)
    names = [b":method", b":path", b":authority", b"host", b"cookie", b"te", b"connection",
             b"content-length", b"x", b"accept", b"user-agent", b"X-Up", b"x:y", b"a b",
             b"x\x00", b"", b"content-lengthx", b"keep-alive"]
    values = [b"GET", b"1", b"", b" a", b"a\t", b"a\x00", b"a\nb", b"trailers", b"app.example",
              b"x y", b"\r"]
    blocks = []
    for _ in range(count):
        block = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randrange(0, 6))]
        if rng.random() < 0.6:
            cut = rng.randrange(0, len(block) + 1)
            block = BASE + block if rng.random() < 0.8 else block[:cut] + BASE + block[cut:]
        blocks.append((block, rng.choice([REQUEST, TRAILER])))
    return blocks


def test_known_names_cold_and_warm_as_h2() -> None:
    """The regular names a block passed are remembered (``_KNOWN``): each
    block gives h2's answer with the memo empty and with it holding every
    name seen so far (names out of sequence, in trailers, next to bad names
    or values, ``content-length`` among them)."""
    blocks = _random_blocks(18, 2500)
    for rounds in range(2):
        for block, flags in blocks:
            if rounds == 0:
                _KNOWN.clear()
            same(block, flags)
    assert b"accept" in _KNOWN and b"x" in _KNOWN and b"content-length" in _KNOWN
    # never remembered: bad, pseudo-header, connection-specific or special names
    for name in (b"X-Up", b"x:y", b"a b", b"x\x00", b"", b":path", b"connection",
                 b"keep-alive", b"te", b"host", b"cookie"):
        assert name not in _KNOWN, name


def test_known_names_report_content_length() -> None:
    """The second value tells the stream to scan for ``content-length`` (h2
    then checks its value), memo cold or warm; other names never say so."""
    _KNOWN.clear()
    for _ in range(2):
        block = [HeaderTuple(*h) for h in [*BASE, (b"content-length", b"5")]]
        assert _checked_request(block, REQUEST)[1] is True
        block = [HeaderTuple(*h) for h in [*BASE, (b"content-lengthx", b"5")]]
        assert _checked_request(block, REQUEST)[1] is False


def test_known_names_bounded() -> None:
    _KNOWN.clear()
    for i in range(5000):
        check_request_headers([*BASE, (b"x-%d" % i, b"1")], REQUEST)
        assert len(_KNOWN) <= _KNOWN_NAMES
    check_request_headers([*BASE, (b"x-" + b"a" * 100, b"1")], REQUEST)
    assert b"x-" + b"a" * 100 not in _KNOWN  # long names are checked every time


def test_plain_response_names_cold_and_warm_as_h2() -> None:
    """Response names only lower-cased and stripped are remembered
    (``_PLAIN_OUT``): random response and trailer blocks (any case, padded
    names, pseudo-header fields after regular ones, connection-specific,
    never-indexed, ``te`` and empty names, str names and values,
    ``HeaderTuple`` fields) give h2's outbound answer and field types with
    the memo empty and warm."""
    rng = random.Random(181)
    names: list[Any] = [b":status", b"Content-Type", b"content-type", b" ETag ", b"Server",
                        b"Connection", b"Keep-Alive", b"Authorization", b"Cookie", b"TE",
                        b"te", b"", b" ", b"X-A", b":path", b" :status", b"Set-Cookie",
                        "Content-Type", "x-str", b"Proxy-Authorization", b"\x0bX-V"]
    values: list[Any] = [b"200", b"100", b"text/html", b" 1 ", b"trailers", b"gzip",
                         b"short=1", b"a-long-cookie-value=123456", b"", "str", b"\t"]
    blocks = []
    for _ in range(2500):
        block = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randrange(0, 7))]
        if rng.random() < 0.5:
            block = [(b":status", b"200"), *block]
        if rng.random() < 0.3:
            block = [HeaderTuple(n, v) if isinstance(n, bytes) and isinstance(v, bytes)
                     else (n, v) for n, v in block]
        blocks.append((block, rng.choice([RESPONSE, SENT_TRAILER])))
    errors = 0
    for rounds in range(2):
        for block, flags in blocks:
            if rounds == 0:
                _PLAIN_OUT.clear()
            # (h2's send_headers encodes str names and values first)
            want = h2_outbound(utf8_encode_headers(block), flags)
            got = ours_outbound(block, flags)
            assert got == want, block
            if want != "error":
                assert [type(h) for h in got] == [type(h) for h in want], block
            errors += want == "error"
    assert 500 < errors < 4500, errors
    assert _PLAIN_OUT[b"Content-Type"] == b"content-type" and _PLAIN_OUT[b" ETag "] == b"etag"
    for name in (b"Connection", b"Authorization", b"Cookie", b"TE", b"", b" :status",
                 b":status"):
        assert not _PLAIN_OUT.get(name), name  # (b"": known to take every step)


def test_a_configured_logger_still_hears_the_response_head() -> None:
    """h2's ``Send headers`` debug call is skipped only for its no-op
    ``DummyLogger``; a connection given a logger hears it as before."""
    heard: list[str] = []

    class Recorder:
        def debug(self, fmt: str, *args: Any) -> None:
            heard.append(fmt)

        def trace(self, fmt: str, *args: Any) -> None:
            pass

    server = _TrailingH2State(h2.config.H2Configuration(
        client_side=False, header_encoding=None, logger=Recorder()))
    server.initiate_connection()
    client = _client()
    client.send_headers(1, BASE, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_response_head(1, [(b":status", b"200"), (b"Content-Type", b"text/plain")])
    assert "Send headers %s on %r" in heard
    events = client.receive_data(server.data_to_send())
    got = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert got.headers == [(b":status", b"200"), (b"content-type", b"text/plain")]


@pytest.mark.parametrize("block", [
    [(b":status", b"200"), (b"x", b"1")], [(b":status", b"200"), (b":path", b"/")],
    [(b":status", b"200"), (b":method", b"GET")], [(b"x", b"1")], [],
    [(b":status", b"100")], [(b":status", b"200"), (b":status", b"204")],
    [(b":path", b"/"), (b":status", b"200")]])
def test_response_head_pseudo_fields_as_h2(block: list[tuple[bytes, bytes]]) -> None:
    """A response head's pseudo-header check (skipped when the block has
    only ``:status`` and h2 would call it a response) then a second block
    (trailers: a pseudo-header field there is refused): the same bytes or
    the same error as plain h2."""
    ours, theirs = _server(), h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None))
    theirs.initiate_connection()
    theirs.data_to_send()
    results = []
    for server in (ours, theirs):
        client, got = _client(), []
        client.send_headers(1, BASE, end_stream=True)
        server.receive_data(client.data_to_send())
        for sent, end in ((block, False), ([(b":status", b"200")], True)):
            try:
                server.send_headers(1, sent, end_stream=end)
                got.append(server.data_to_send())
            except ProtocolError as exc:
                got.append(type(exc).__name__)
        results.append(got)
    assert results[0] == results[1]


def test_plain_response_names_bounded() -> None:
    _PLAIN_OUT.clear()
    for i in range(3000):
        prepare_response_headers([(b":status", b"200"), (b"X-%d" % i, b"1")], RESPONSE)
        assert len(_PLAIN_OUT) <= _KNOWN_NAMES
    long = b"X-" + b"a" * 100
    assert prepare_response_headers([(b":status", b"200"), (long, b"1")], RESPONSE)[1] == (
        long.lower(), b"1")
    assert long not in _PLAIN_OUT  # long names take every step every time
