"""nbgateway.proxy.h2_frames: frames serialised at once are hyperframe's
bytes, and the gateway's ``h2`` state machine (its streams' send_headers /
send_data / end_stream, its _receive_frame) gives the same bytes, events and
errors as plain ``h2`` on the same input, closed-stream cases included."""

from __future__ import annotations

import random
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from nbgateway.proxy.h2_frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    framed,
)
from nbgateway.proxy.h2trailers import _TrailingH2State


@pytest.mark.parametrize("seed", range(3))
def test_framed_is_hyperframes_serialisation(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        sid = rng.choice((1, 3, 2 ** 31 - 1, rng.randrange(1, 2 ** 31)))
        body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 255, 256, 300))))
        if rng.random() < 0.1:
            body = b"x" * rng.choice((65535, 65536, 70000))
        kind = rng.choice((DATA, HEADERS, CONTINUATION))
        frame: Any
        if kind == DATA:
            frame = DataFrame(sid)
            flags = END_STREAM if rng.random() < 0.5 else 0
            if flags:
                frame.flags.add("END_STREAM")
        elif kind == HEADERS:
            frame = HeadersFrame(sid)
            flags = 0
            if rng.random() < 0.5:
                frame.flags.add("END_STREAM")
                flags |= END_STREAM
            if rng.random() < 0.5:
                frame.flags.add("END_HEADERS")
                flags |= END_HEADERS
        else:
            frame = ContinuationFrame(sid)
            flags = END_HEADERS if rng.random() < 0.5 else 0
            if flags:
                frame.flags.add("END_HEADERS")
        frame.data = body
        got = framed(kind, flags, sid, body)
        assert got.serialize() == frame.serialize()
        assert got.body_len == len(body)


REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.example"),
           (b":path", b"/")]


def _pair() -> tuple[Any, Any, Any]:
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    ours = _TrailingH2State(config)
    theirs = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    for conn in (ours, theirs, client):
        conn.initiate_connection()
    hello = client.data_to_send()
    for server in (ours, theirs):
        server.receive_data(hello)
        client.receive_data(server.data_to_send())
    return ours, theirs, client


def _step(server: Any, action: tuple[Any, ...]) -> Any:
    try:
        if action[0] == "recv":
            events = server.receive_data(action[1])
            return ("events", [(repr(e), repr(getattr(e, "priority_updated", None)),
                                repr(getattr(e, "stream_ended", None))) for e in events],
                    server.data_to_send())
        name, args = action[1], action[2]
        getattr(server, name)(*args)
        return ("sent", server.data_to_send())
    except Exception as exc:  # the same class at the same step
        return ("raised", type(exc).__name__, server.data_to_send())


def _raw(frame: Any) -> bytes:
    return frame.serialize()


def _actions(rng: random.Random, client: Any) -> list[tuple[Any, ...]]:
    """Client frames (some on closed or reset streams) and server sends."""
    actions: list[tuple[Any, ...]] = []
    sids = [1, 3, 5, 7]
    for sid in sids:
        client.send_headers(sid, REQUEST, end_stream=rng.random() < 0.5)
        actions.append(("recv", client.data_to_send()))
    for _ in range(40):
        sid = rng.choice([*sids, 2, 9, 101])
        roll = rng.random()
        if roll < 0.2:
            frame = DataFrame(sid)
            frame.data = b"d" * rng.choice((0, 5, 100))
            if rng.random() < 0.5:
                frame.flags.add("END_STREAM")
            actions.append(("recv", _raw(frame)))
        elif roll < 0.3:
            frame = RstStreamFrame(sid)
            frame.error_code = rng.choice((0, 8))
            actions.append(("recv", _raw(frame)))
        elif roll < 0.35:
            frame = WindowUpdateFrame(sid)
            frame.window_increment = rng.choice((1, 1000))
            actions.append(("recv", _raw(frame)))
        elif roll < 0.55:
            status = rng.choice((b"200", b"100", b"204"))
            actions.append(("send", "send_headers",
                            (sid, [(b":status", status), (b"x-a", b"v" * rng.choice((1, 20000)))],
                             rng.random() < 0.3)))
        elif roll < 0.8:
            data = b"x" * rng.choice((0, 1, 100, 16384, 16385))
            actions.append(("send", "send_data", (sid, data, rng.random() < 0.3)))
        elif roll < 0.9:
            actions.append(("send", "end_stream", (sid,)))
        else:
            frame = HeadersFrame(sid)
            frame.data = b"\x82\x87\x84\x41\x01a"  # GET https / authority "a"
            frame.flags.add("END_HEADERS")
            if rng.random() < 0.5:
                frame.flags.add("END_STREAM")
            actions.append(("recv", _raw(frame)))
    return actions


@pytest.mark.parametrize("seed", range(40))
def test_state_machine_matches_plain_h2(seed: int) -> None:
    rng = random.Random(seed)
    ours, theirs, client = _pair()
    for action in _actions(rng, client):
        got, want = _step(ours, action), _step(theirs, action)
        assert got == want, action
        if got[0] == "raised" and action[0] == "recv":
            break  # the connection is over (GOAWAY sent)


def _frames_of(buffer: Any, chunks: list[bytes]) -> list[Any]:
    out: list[Any] = []
    try:
        for chunk in chunks:
            buffer.add_data(chunk)
            for frame in buffer:
                fields = dict(frame.__dict__)
                fields["flags"] = sorted(frame.flags)
                out.append((type(frame).__name__, fields))
    except Exception as exc:
        out.append(("raised", type(exc).__name__))
    return out


def _random_frame(rng: random.Random) -> bytes:
    kind = rng.choice((HEADERS, HEADERS, HEADERS, DATA, CONTINUATION, 0x8))
    sid = rng.choice((1, 3, 0, 2 ** 31 - 1))
    flags = rng.choice((0x4, 0x5, 0x1, 0x0, 0x24, 0x2d, 0x0c, 0x6, 0xff))
    body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 6, 40))))
    if rng.random() < 0.05:
        body = b"z" * 17000  # over the frame size limit
    size = len(body)
    head = bytes(((size >> 16) & 0xFF, (size >> 8) & 0xFF, size & 0xFF, kind, flags))
    return head + (sid | (rng.random() < 0.1) << 31).to_bytes(4, "big") + body


@pytest.mark.parametrize("seed", range(60))
def test_headers_first_buffer_parses_as_h2(seed: int) -> None:
    """The same frames (every attribute) or the same error as h2's buffer,
    whatever the frames and however the bytes are cut."""
    from h2.frame_buffer import FrameBuffer

    from nbgateway.proxy.h2_frames import HeadersFirstBuffer

    rng = random.Random(seed)
    wire = b"".join(_random_frame(rng) for _ in range(rng.randint(1, 12)))
    cuts = sorted(rng.sample(range(len(wire) + 1), min(len(wire) + 1, rng.randint(0, 4))))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    ours, theirs = HeadersFirstBuffer(server=False), FrameBuffer(server=False)
    for buffer in (ours, theirs):
        buffer.max_frame_size = 16384
    assert _frames_of(ours, chunks) == _frames_of(theirs, chunks)


FIELDS = [(b"content-length", b"5"), (b"content-length", b"0"), (b"content-length", b"x1"),
          (b"content-length", b"7"), (b":status", b"100"), (b":status", b"200"),
          (b"te", b"trailers"), (b"te", b"gzip"), (b"connection", b"close"), (b"Upper", b"v"),
          (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"host", b"a.example"),
          (b"host", b"b.example"), (b"x-a", b" v"), (b"x-a", b"ok"), (b":protocol", b"ws"),
          (b"accept", b"*/*"), (b"x-b", b"a\x00b")]


def _request_block(rng: random.Random) -> list[tuple[bytes, bytes]]:
    method = rng.choice((b"GET", b"HEAD", b"POST", b"CONNECT"))
    block = [(b":method", method), (b":scheme", b"https"), (b":authority", b"a.example"),
             (b":path", rng.choice((b"/", b"")))]
    if rng.random() < 0.2:
        block.pop(rng.randrange(len(block)))
    rng.shuffle(block)
    block += [rng.choice(FIELDS) for _ in range(rng.choice((0, 1, 2, 4)))]
    if rng.random() < 0.2:
        block.insert(rng.randrange(len(block) + 1), rng.choice(FIELDS))
    return block


@pytest.mark.parametrize("seed", range(40))
def test_new_stream_requests_are_received_as_h2(seed: int) -> None:
    """Request blocks opening streams (valid, or refused anywhere h2 refuses
    them: content-length, :status, te, connection fields, pseudo-header
    order, Host/:authority), with and without END_STREAM and priority
    fields, then DATA
    checked against content-length: the same events, bytes and errors as
    plain h2."""
    from hpack import Encoder

    rng = random.Random(seed)
    ours, theirs, _client = _pair()
    encoder = Encoder()
    sid = 1
    for _ in range(25):
        block = encoder.encode(_request_block(rng))
        end = rng.random() < 0.5
        frame = HeadersFrame(sid)
        frame.data = block
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        if rng.random() < 0.5:  # Chrome's priority fields (a self-dependency refused)
            frame.flags.add("PRIORITY")
            frame.depends_on = rng.choice((0, max(sid - 2, 0), sid, 99))
            frame.stream_weight = rng.choice((0, 15, 255))
            frame.exclusive = rng.random() < 0.5
        actions = [("recv", _raw(frame))]
        if not end:
            data = DataFrame(sid)
            data.data = b"x" * rng.choice((0, 5, 7))
            data.flags.add("END_STREAM")
            actions.append(("recv", _raw(data)))
        for action in actions:
            got, want = _step(ours, action), _step(theirs, action)
            assert got == want, action
            if got[0] == "raised":
                return  # the connection is over (GOAWAY sent)
        sid += 2


def test_open_stream_counts_and_pruning_match_plain_h2() -> None:
    """``_TrailingH2State._open_streams`` (each stream's state read once)
    counts and prunes as h2's: after every step of client frames (new
    streams among streams closed, reset or half closed) and server sends,
    the same open inbound and outbound counts, the same streams kept and
    the same closed streams with how they were closed."""
    pruning = 0
    for seed in range(30):
        pruning += _open_streams_run(random.Random(seed))
    assert pruning >= 3, pruning  # (runs that closed and pruned streams)


def _open_streams_run(rng: random.Random) -> bool:
    ours, theirs, client = _pair()
    actions = _actions(rng, client)
    sid = 11
    for at in sorted(rng.sample(range(len(actions)), 8), reverse=True):
        frame = HeadersFrame(sid)
        frame.data = b"\x82\x87\x84\x41\x01a"
        frame.flags.add("END_HEADERS")
        if rng.random() < 0.5:
            frame.flags.add("END_STREAM")
        actions.insert(at, ("recv", _raw(frame)))
        sid += 2
    pruned = False
    for action in actions:
        got, want = _step(ours, action), _step(theirs, action)
        assert got == want, action
        counts = [(c.open_inbound_streams, c.open_outbound_streams) for c in (ours, theirs)]
        assert counts[0] == counts[1]
        assert sorted(ours.streams) == sorted(theirs.streams)
        assert dict(ours._closed_streams) == dict(theirs._closed_streams)
        pruned = pruned or bool(ours._closed_streams)
        if got[0] == "raised" and action[0] == "recv":
            break
    return pruned


@pytest.mark.parametrize("action", ["headers", "data", "recv"])
def test_closed_connection_refuses_as_plain_h2(action: str) -> None:
    """The connection's no-op transitions are skipped only in SERVER_OPEN:
    once the server has sent GOAWAY, a response head, data or a new
    stream's HEADERS meet h2's own transition (the same error, the same
    bytes) on both."""
    rng = random.Random(7)
    ours, theirs, client = _pair()
    for sid in (1, 3):
        client.send_headers(sid, REQUEST, end_stream=sid == 1)
    hello = client.data_to_send()
    results = []
    for server in (ours, theirs):
        server.receive_data(hello)
        server.send_headers(3, [(b":status", b"200")])
        server.close_connection()
        server.data_to_send()
        if action == "headers":
            got = _step(server, ("send", "send_headers", (1, [(b":status", b"200")])))
        elif action == "data":
            got = _step(server, ("send", "send_data", (3, b"x" * rng.choice((1, 10)))))
        else:
            frame = HeadersFrame(5)
            frame.data = b"\x82\x87\x84\x41\x01a"
            frame.flags.add("END_HEADERS")
            got = _step(server, ("recv", _raw(frame)))
        results.append(got)
    assert results[0] == results[1]
    assert results[0][0] == "raised"


def _event_fields(event: Any) -> tuple[str, list[tuple[str, str]]]:
    """An event's type and fields (events it links to by their type)."""
    fields = getattr(event, "__dict__", {})
    return type(event).__name__, sorted(
        (k, type(v).__name__ if isinstance(v, h2.events.Event) else repr(v))
        for k, v in fields.items())


def test_stream_input_is_h2s_process_input() -> None:
    """``_stream_input`` (the transition found by the enums' values) against
    h2's ``process_input`` for every state, input and a spread of the
    machine's flags: the same state, events, machine attributes and error
    class afterwards."""
    from h2.stream import H2StreamStateMachine, StreamInputs, StreamState

    from nbgateway.proxy.h2trailers import _stream_input

    rng = random.Random(5)
    flags = ("client", "headers_sent", "trailers_sent", "headers_received",
             "trailers_received")
    outcomes = set()
    for state in StreamState:
        for input_ in StreamInputs:
            for _ in range(4):
                values = {f: rng.choice((None, False, True)) for f in flags}
                results = []
                for run in (lambda m, i: m.process_input(i), _stream_input):
                    machine = H2StreamStateMachine(1)
                    machine.state = state
                    for f, v in values.items():
                        setattr(machine, f, v)
                    try:
                        got: Any = [_event_fields(e) for e in run(machine, input_)]
                    except Exception as exc:
                        got = type(exc).__name__
                    results.append((got, dict(vars(machine))))
                assert results[0] == results[1], (state, input_, values)
                outcomes.add(results[0][0] if isinstance(results[0][0], str) else "events")
    assert {"events", "ProtocolError", "StreamClosedError"} <= outcomes


def test_local_flow_control_window_as_plain_h2() -> None:
    """The connection's window read (the stream looked up in place): after
    every step of random frame sequences, each stream id (open, closed,
    never opened, 0) gives h2's window or h2's error."""
    def window(server: Any, sid: int) -> Any:
        try:
            return server.local_flow_control_window(sid)
        except Exception as exc:
            return type(exc).__name__

    seen = set()
    for seed in range(20):
        rng = random.Random(seed)
        ours, theirs, client = _pair()
        for action in _actions(rng, client):
            got, want = _step(ours, action), _step(theirs, action)
            assert got == want, action
            for sid in (0, 1, 3, 5, 7, 9, 101):
                mine = window(ours, sid)
                assert mine == window(theirs, sid), (seed, sid)
                seen.add(mine if isinstance(mine, str) else "window")
            if got[0] == "raised" and action[0] == "recv":
                break
    assert {"window", "StreamClosedError", "NoSuchStreamError"} <= seen, seen
