"""Hostile input at the TCP entry point: random, truncated and near-valid
segments (bogus options, overlapping data, wild sequence numbers) against a
listener and live connections.  Nothing escapes, state stays bounded, and the
connections still carry data afterwards."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.netstack.tcp_wire import build_segment
from nbgateway.netstack.testing import rcv_wire, snd_wire

from .tcp_fakes import A4, B4, RecordingUser, listen_recording, make_pair

FLAGS = st.integers(0, 0x3F)
OPTS = st.one_of(st.just(b""), st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]))


def near_valid(conn):
    """Segments aimed at a live connection's sequence space."""
    return st.builds(
        lambda dseq, dack, flags, wnd, opts, payload: build_segment(
            conn.rport, conn.lport, rcv_wire(conn, conn.rcv_nxt + dseq),
            snd_wire(conn, conn.snd_una + dack), flags, wnd, opts, payload),
        st.integers(-70000, 300000), st.integers(-70000, 70000), FLAGS, st.integers(0, 0xFFFF),
        OPTS, st.binary(max_size=1500),
    )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_hostile_segments_never_escape(data):
    clock, a, b, w = make_pair()
    _, acc = listen_recording(b, 80, max_half_open=16, backlog=16)
    u = RecordingUser()
    conn = a.tcp.connect(B4, 80, u)
    w.run(until=lambda: acc and u.established)
    srv = acc[0].conn
    for _ in range(data.draw(st.integers(1, 30))):
        kind = data.draw(st.sampled_from(["raw", "srv", "listener"]))
        if kind == "raw":
            seg = data.draw(st.binary(max_size=100))
        elif kind == "srv":
            seg = data.draw(near_valid(srv))
        else:
            seg = build_segment(data.draw(st.integers(1, 65535)), 80,
                                data.draw(st.integers(0, 2**32 - 1)),
                                data.draw(st.integers(0, 2**32 - 1)), data.draw(FLAGS),
                                100, data.draw(OPTS), data.draw(st.binary(max_size=50)))
        if data.draw(st.booleans()):
            seg = seg[: data.draw(st.integers(0, len(seg)))]
        b.inject(A4, B4, seg)
        clock.advance(data.draw(st.sampled_from([0.0, 0.001, 0.3])))
        b.fire_timers()
    b.sent.clear()
    assert b.counters["tcp_internal_errors"] == 0
    assert len(b.tcp.conns) <= 16 + 1 + len(acc)
    # the stacks still work: a fresh connection transfers data
    u2 = RecordingUser()
    c2 = a.tcp.connect(B4, 80, u2)
    w.run(until=lambda: u2.established or u2.closed, max_time=60)
    assert u2.established
    c2.send(b"still alive", clock.seconds())
    w.run(until=lambda: any(x.data == b"still alive" for x in acc), max_time=60)
    assert any(x.data == b"still alive" for x in acc)
    assert conn is not None
