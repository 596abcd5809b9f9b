"""The HTTP/2 send loop's scheduler (:class:`nbgateway.proxy.h2trailers.LazyPriority`):
a round robin with the priority tree's interface and errors while the
client signals no priorities, the ``priority`` package's tree (with the open
streams and their blocked state) from the first priority signal on; and the
gateway's connection uses it, serving streams with and without priorities."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import priority
import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from nbgateway.proxy.h2trailers import LazyPriority, TrailersH2Connection


def rounds(sched: Any, n: int) -> list[int]:
    return [next(sched) for _ in range(n)]


def setup(sched: Any, ids: list[int], blocked: set[int]) -> Any:
    for sid in ids:  # as Twisted does: insert, block; unblock when data is queued
        sched.insert_stream(sid)
        sched.block(sid)
    for sid in ids:
        if sid not in blocked:
            sched.unblock(sid)
    return sched


def test_round_robin_over_unblocked_streams_like_the_tree() -> None:
    for sched in (LazyPriority(), priority.PriorityTree()):
        setup(sched, [1, 3, 5, 7], blocked={5})
        got = rounds(sched, 6)
        assert sorted(got[:3]) == [1, 3, 7] and sorted(got[3:6]) == [1, 3, 7]
        sched.block(1)
        sched.block(3)
        assert rounds(sched, 2) == [7, 7]
        sched.block(7)
        with pytest.raises(priority.DeadlockError):
            next(sched)
        sched.unblock(5)
        assert next(sched) == 5
        sched.remove_stream(5)
        with pytest.raises(priority.DeadlockError):
            next(sched)


def test_the_trees_errors() -> None:
    for sched in (LazyPriority(), priority.PriorityTree()):
        sched.insert_stream(1)
        with pytest.raises(priority.DuplicateStreamError):
            sched.insert_stream(1)
        for call in (sched.block, sched.unblock, sched.remove_stream):
            with pytest.raises(priority.MissingStreamError):
                call(9)
        with pytest.raises(priority.MissingStreamError):
            sched.reprioritize(9, weight=32)


def test_a_priority_signal_switches_to_the_tree_keeping_the_streams() -> None:
    sched = setup(LazyPriority(), [1, 3, 5], blocked={1})
    assert sched.tree is None
    sched.insert_stream(7, depends_on=3, weight=256, exclusive=True)
    assert isinstance(sched.tree, priority.PriorityTree)
    # 7 is now 3's only child and 5 was not touched: 3 and 5 share the root
    assert sorted(rounds(sched, 2)) == [3, 5]
    sched.block(3)
    sched.block(5)
    assert next(sched) == 7  # 3's child gets 3's share once 3 is blocked
    sched.block(7)
    with pytest.raises(priority.DeadlockError):
        next(sched)  # 1 stayed blocked
    sched.unblock(1)
    assert next(sched) == 1
    again = setup(LazyPriority(), [1], blocked=set())
    again.reprioritize(1, weight=32)
    assert again.tree is not None and next(again) == 1


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"hello " + request.path


def serve(client_priority: bool) -> tuple[TrailersH2Connection, list[Any]]:
    clock = task.Clock()
    site = Site(Hello(), reactor=clock)
    conn = TrailersH2Connection(clock)
    conn.site, conn.requestFactory = site, Request
    wire = StringTransport()
    conn.makeConnection(wire)
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.initiate_connection()
    for i, sid in enumerate((1, 3, 5)):
        extra: dict[str, Any] = {}
        if client_priority:
            extra = {"priority_weight": 256, "priority_depends_on": 1 if i else 0,
                     "priority_exclusive": True}
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                  (b":authority", b"a"), (b":path", b"/p%d" % sid)],
                            end_stream=True, **extra)
    conn.dataReceived(client.data_to_send())
    events: list[Any] = []
    for _ in range(20):
        clock.advance(0)
        events += client.receive_data(wire.value())
        wire.clear()
    conn.connectionLost(Exception("done"))
    return conn, events


@pytest.mark.parametrize("client_priority", [False, True])
def test_the_connection_serves_every_stream(client_priority: bool) -> None:
    conn, events = serve(client_priority)
    assert isinstance(conn.priority, LazyPriority)
    assert (conn.priority.tree is not None) is client_priority
    bodies: dict[int, bytes] = {}
    for e in events:
        if isinstance(e, h2.events.DataReceived):
            bodies[e.stream_id] = bodies.get(e.stream_id, b"") + e.data
    ended = {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)}
    assert bodies == {1: b"hello /p1", 3: b"hello /p3", 5: b"hello /p5"}
    assert ended == {1, 3, 5}


def test_a_dependency_on_a_closed_stream_is_the_default_priority() -> None:
    """RFC 7540 5.3.1; the tree alone keeps a placeholder per such stream
    (one more node per request, every later step slower, 1,000 the limit)."""
    sched = LazyPriority()
    sched.insert_stream(1)
    sched.remove_stream(1)
    for sid in range(3, 4001, 2):  # each depends on the one before, closed
        sched.insert_stream(sid, depends_on=sid - 2, weight=256, exclusive=True)
        sched.block(sid)
        sched.remove_stream(sid)
    assert sched.tree is None and not sched.streams
    with pytest.raises(priority.MissingStreamError):
        sched.reprioritize(4001, depends_on=3999, weight=220)
    assert sched.tree is None  # nothing to prioritise yet: still the round robin
    sched.insert_stream(5001)
    sched.insert_stream(5003, depends_on=5001, weight=32)  # an open parent: the tree
    tree = sched.tree
    assert tree is not None
    for sid in range(5005, 9001, 2):
        sched.insert_stream(sid, depends_on=sid - 4, weight=256, exclusive=True)
        sched.remove_stream(sid - 4)
    assert len(tree._streams) < 10  # the root, open streams, no placeholders
    assert next(sched) in tree._streams


def test_priority_frames_for_idle_streams_are_capped() -> None:
    from nbgateway.proxy.h2trailers import IDLE_PRIORITY_NODES

    clock = task.Clock()
    conn = TrailersH2Connection(clock)
    conn.site, conn.requestFactory = Site(Hello(), reactor=clock), Request
    wire = StringTransport()
    conn.makeConnection(wire)
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.initiate_connection()
    for sid in range(3, 3 + 2 * 1500, 2):  # idle streams, Firefox-style groups and beyond
        client.prioritize(sid, weight=32, depends_on=sid - 2 if sid > 3 else 0)
    conn.dataReceived(client.data_to_send())  # the tree's limit (1,000) not reached
    assert len(conn.priority) == IDLE_PRIORITY_NODES
    assert conn.priority.tree is not None  # the first groups are in the tree
    sid = 3 + 2 * 1500
    client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                              (b":authority", b"a"), (b":path", b"/x")], end_stream=True)
    conn.dataReceived(client.data_to_send())
    events: list[Any] = []
    for _ in range(10):
        clock.advance(0)
        events += client.receive_data(wire.value())
        wire.clear()
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == b"hello /x"
    assert len(conn.priority) == IDLE_PRIORITY_NODES  # the served stream is gone again
    conn.connectionLost(Exception("done"))
