"""The gateway's HTTP/2 send loop (TrailersH2Connection._sendPrioritisedData):
woken by data or a stream's end, it runs at the end of the reactor turn, so
what a turn queued on all streams goes out in one run of it, and a
response's last DATA frame carries END_STREAM (no empty DATA frame of its
own) unless trailers follow."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import DataFrame, Frame, HeadersFrame
from twisted.internet.task import Clock
from twisted.test.proto_helpers import StringTransport
from twisted.web import resource, server

from nbgateway.proxy.h2trailers import TrailersH2Connection, set_trailers


class _Body(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        size = int(request.args.get(b"n", [b"512"])[0])
        if request.args.get(b"trailers"):
            set_trailers(request, [(b"grpc-status", b"0")])
        if size:
            request.write(b"x" * size)
        request.finish()
        return server.NOT_DONE_YET


class _Writes(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def _connection() -> tuple[TrailersH2Connection, _Writes, Clock, Any]:
    clock = Clock()
    conn = TrailersH2Connection(clock)
    site = server.Site(_Body())
    conn.site = site
    conn.requestFactory = site.requestFactory
    conn.factory = site
    transport = _Writes()
    conn.makeConnection(transport)
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.initiate_connection()
    conn.dataReceived(client.data_to_send())
    clock.advance(0)
    client.receive_data(transport.value())
    transport.clear()
    transport.writes.clear()
    return conn, transport, clock, client


def _frames(data: bytes) -> list[Frame]:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


def _request(client: Any, sid: int, query: bytes) -> None:
    client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                              (b":authority", b"a.example"), (b":path", b"/?" + query)],
                        end_stream=True)


@pytest.mark.parametrize(("size", "datas"), [(512, 1), (40000, 3), (0, 1)])
def test_the_last_data_frame_ends_the_stream(size: int, datas: int) -> None:
    conn, transport, clock, client = _connection()
    _request(client, 1, b"n=%d" % size)
    conn.dataReceived(client.data_to_send())
    clock.advance(0)
    frames = [f for f in _frames(transport.value()) if f.stream_id == 1]
    assert [type(f) for f in frames] == [HeadersFrame] + [DataFrame] * datas
    assert ["END_STREAM" in f.flags for f in frames] == [False] * datas + [True]
    assert sum(len(f.data) for f in frames[1:]) == size
    events = client.receive_data(transport.value())
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert 1 not in conn.streams  # cleaned up


def test_trailers_still_end_the_stream() -> None:
    conn, transport, clock, client = _connection()
    _request(client, 1, b"n=100&trailers=1")
    conn.dataReceived(client.data_to_send())
    clock.advance(0)
    frames = [f for f in _frames(transport.value()) if f.stream_id == 1]
    assert [type(f) for f in frames] == [HeadersFrame, DataFrame, HeadersFrame]
    assert ["END_STREAM" in f.flags for f in frames] == [False, False, True]
    events = client.receive_data(transport.value())
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert [e.headers for e in trailers] == [[(b"grpc-status", b"0")]]


def test_one_turn_one_loop_run_for_all_streams() -> None:
    conn, transport, clock, client = _connection()
    runs = []
    loop = conn._sendPrioritisedData
    conn._sendPrioritisedData = lambda *a: (runs.append(1), loop(*a))  # type: ignore[method-assign]
    for sid in (1, 3, 5):
        _request(client, sid, b"n=300")
    conn.dataReceived(client.data_to_send())
    assert runs == []
    before = [f for w in transport.writes for f in _frames(w)]
    assert not any(isinstance(f, DataFrame) for f in before)  # only HEADERS so far
    transport.writes.clear()
    clock.advance(0)
    assert runs == [1]
    # each finished stream's frames are written before its cleanup runs
    assert len(transport.writes) == 3
    frames = [f for w in transport.writes for f in _frames(w)]
    assert sorted(f.stream_id for f in frames if "END_STREAM" in f.flags) == [1, 3, 5]
    ended = [e.stream_id for e in client.receive_data(transport.value())
             if isinstance(e, h2.events.StreamEnded)]
    assert sorted(ended) == [1, 3, 5]
