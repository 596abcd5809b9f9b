"""Review of 39d801d (the HTTP/2 send loop runs at the end of the reactor
turn; the last DATA frame carries END_STREAM): what happens between the
queueing and the turn's end, and at the flow-control window's edge.

* a response queued in a turn is on the wire after that one deferred call
  (``clock.advance(0)``), also when written from a timed call;
* a stream the client resets (or the gateway aborts) between the queueing
  and the turn's end sends nothing more and the other streams' responses
  still go out; a connection lost in between writes no DATA, raises nothing;
* a body that fills the window exactly ends on that DATA frame; one larger
  than the window ends on the DATA frame after the WINDOW_UPDATE, and
  trailers pending at that point come after the last DATA frame.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import resource, server

from nbgateway.proxy.h2trailers import TrailersH2Connection, set_trailers


class _Turns(Clock):
    """A Clock whose :meth:`turn` runs the calls due when it starts, as one
    reactor iteration does (``advance(0)`` also runs the calls they add, so
    a loop that reschedules itself while a window is closed never ends)."""

    def turn(self) -> int:
        due = [c for c in self.calls if c.getTime() <= self.seconds()]
        for c in due:
            self.calls.remove(c)
        for c in due:
            if not c.cancelled:
                c.called = 1
                c.func(*c.args, **c.kw)
        return len(due)


class _Held(resource.Resource):
    """Keeps every request open for the test to answer."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append(request)
        return server.NOT_DONE_YET


def _connection(window: int | None = None) -> tuple[TrailersH2Connection, StringTransport,
                                                    Clock, Any, _Held]:
    clock = _Turns()
    conn = TrailersH2Connection(clock)
    held = _Held()
    site = server.Site(held)
    conn.site = site
    conn.requestFactory = site.requestFactory
    conn.factory = site
    transport = StringTransport()
    conn.makeConnection(transport)
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.initiate_connection()
    if window is not None:
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    conn.dataReceived(client.data_to_send())
    clock.advance(0)
    client.receive_data(transport.value())
    conn.dataReceived(client.data_to_send())  # the SETTINGS ack
    clock.advance(0)
    transport.clear()
    return conn, transport, clock, client, held


def _frames(data: bytes) -> list[Frame]:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


def _open(conn: Any, client: Any, held: _Held, *sids: int) -> list[Any]:
    for sid in sids:
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                  (b":authority", b"a.example"), (b":path", b"/")],
                            end_stream=True)
    conn.dataReceived(client.data_to_send())
    return held.requests[-len(sids):]


def _data(transport: StringTransport, sid: int) -> list[tuple[int, bool]]:
    return [(len(f.data), "END_STREAM" in f.flags) for f in _frames(transport.value())
            if f.stream_id == sid and isinstance(f, DataFrame)]


def test_a_response_goes_out_at_the_next_deferred_call() -> None:
    conn, transport, clock, client, held = _connection()
    (req,) = _open(conn, client, held, 1)
    clock.advance(0)
    transport.clear()
    req.write(b"x" * 10)
    req.finish()
    clock.advance(0)  # one reactor turn: nothing waits longer
    assert _data(transport, 1) == [(10, True)]
    assert 1 not in conn.streams and not clock.getDelayedCalls()
    # written from a timed call (a Deferred fired by the reactor's timers)
    (req,) = _open(conn, client, held, 3)
    clock.advance(0)
    transport.clear()
    clock.callLater(1, lambda: (req.write(b"y" * 5), req.finish()))
    clock.advance(1)
    clock.advance(0)
    assert _data(transport, 3) == [(5, True)]


def test_a_stream_reset_before_the_turn_ends_sends_nothing_more() -> None:
    conn, transport, clock, client, held = _connection()
    r1, r3 = _open(conn, client, held, 1, 3)
    clock.advance(0)
    client.receive_data(transport.value())
    transport.clear()
    r1.write(b"a" * 100)
    r1.finish()
    r3.write(b"b" * 100)
    r3.finish()
    client.reset_stream(1)
    conn.dataReceived(client.data_to_send())  # the same turn: the loop has not run
    clock.advance(0)
    assert _data(transport, 1) == []
    assert _data(transport, 3) == [(100, True)]
    assert 1 not in conn.streams and 3 not in conn.streams
    assert not conn.conn.queued and not conn.conn.pending_trailers
    events = client.receive_data(transport.value())
    assert [e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)] == [3]


def test_a_stream_aborted_before_the_turn_ends_is_reset_not_ended() -> None:
    conn, transport, clock, client, held = _connection()
    (r1,) = _open(conn, client, held, 1)
    clock.advance(0)
    transport.clear()
    r1.write(b"a" * 100)
    r1.channel.abortConnection()  # the gateway gives the stream up
    clock.advance(0)
    frames = [f for f in _frames(transport.value()) if f.stream_id == 1]
    assert [type(f) for f in frames] == [HeadersFrame, RstStreamFrame]
    assert 1 not in conn.streams and not clock.getDelayedCalls()


def test_a_connection_lost_before_the_turn_ends_writes_nothing() -> None:
    conn, transport, clock, client, held = _connection()
    r1, r3 = _open(conn, client, held, 1, 3)
    clock.advance(0)
    transport.clear()
    r1.write(b"a" * 100)
    r1.finish()
    r3.write(b"b" * 100)
    conn.connectionLost(Failure(ConnectionLost()))
    clock.advance(0)
    assert not [f for f in _frames(transport.value()) if isinstance(f, DataFrame)]
    assert not conn.streams and not conn.conn.queued


def test_a_body_filling_the_window_ends_on_that_frame() -> None:
    conn, transport, clock, client, held = _connection(window=100)
    (r1,) = _open(conn, client, held, 1)
    clock.advance(0)
    transport.clear()
    r1.write(b"a" * 100)
    r1.finish()
    clock.advance(0)
    assert _data(transport, 1) == [(100, True)]
    assert 1 not in conn.streams


def test_a_body_past_the_window_ends_after_the_window_update_trailers_last() -> None:
    conn, transport, clock, client, held = _connection(window=100)
    r1, r3 = _open(conn, client, held, 1, 3)
    clock.advance(0)
    client.receive_data(transport.value())
    transport.clear()
    set_trailers(r3, [(b"grpc-status", b"0")])
    for req in (r1, r3):
        req.write(b"a" * 150)
        req.finish()
    for _ in range(3):
        clock.turn()
    assert _data(transport, 1) == [(100, False)]
    assert _data(transport, 3) == [(100, False)]
    client.receive_data(transport.value())
    transport.clear()
    client.increment_flow_control_window(50, stream_id=1)
    client.increment_flow_control_window(50, stream_id=3)
    conn.dataReceived(client.data_to_send())
    for _ in range(3):
        clock.turn()
    assert _data(transport, 1) == [(50, True)]
    assert _data(transport, 3) == [(50, False)]
    frames = [f for f in _frames(transport.value()) if f.stream_id == 3]
    assert [type(f) for f in frames] == [DataFrame, HeadersFrame]
    assert "END_STREAM" in frames[-1].flags
    events = client.receive_data(transport.value())
    assert sorted(e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)) == [1, 3]
    assert not conn.streams
