"""A keep-alive request/response connection, segment by segment (task.Clock):
the server's ACK of a request rides on its response (no pure ACK per
request), the client's ACK of the response rides on its next request, and
the delayed-ACK and retransmission timers still do their jobs when either
side goes quiet (RFC 1122 4.2.3.2, RFC 5681 4.2)."""

from __future__ import annotations

from nbgateway.netstack.congestion import RTO_MIN
from nbgateway.netstack.tcp_const import DELACK_TIMEOUT
from nbgateway.netstack.tcp_wire import ACK

from .test_tcp_scripted import advance, server

M = 0xFFFFFFFF
REQUEST = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 512\r\n\r\n" + b"x" * 512


def _response_to(peer, seg) -> None:
    """The client takes the response in (its next segment acknowledges it)."""
    peer.rcv_nxt = (seg.seq + len(seg.payload)) & M


def test_one_segment_each_way_per_exchange():
    for ts in (False, True):
        clock, st, peer, user, _ = server(ts=ts, wscale=7)
        conn = user.conn
        for _ in range(50):
            # the request (carrying the ACK of the previous response): nothing
            # goes out yet, the ACK waits for the response
            assert peer.send_data(REQUEST) == []
            assert user.data.endswith(REQUEST)
            clock.advance(0.0003)  # the upstream answers in a later reactor turn
            st.fire_timers()
            assert st.take() == []
            conn.send(RESPONSE, clock.seconds())
            (seg,) = st.take()  # one segment: the response with the ACK
            assert seg.flags & ACK and seg.ack == peer.snd_nxt & M
            assert bytes(seg.payload) == RESPONSE
            _response_to(peer, seg)
            clock.advance(0.001)
            st.fire_timers()
            assert st.take() == []
        assert st.counters["tcp_retransmitted_segments"] == 0 and st.counters["tcp_rto"] == 0
        assert conn.snd_una < conn.snd_max  # the last response is not acknowledged yet
        # the client's delayed ACK of the last response, as a pure ACK after its
        # own delayed-ACK timeout: accepted, nothing retransmitted or answered
        clock.advance(0.04)
        assert peer.tx(ACK) == []
        assert conn.snd_una == conn.snd_max and conn.rtx_at is None
        assert advance(clock, st, RTO_MIN * 2) == []


def test_a_slow_response_gets_the_request_acked_after_the_delay():
    clock, st, peer, user, _ = server()
    assert peer.send_data(REQUEST) == []
    assert advance(clock, st, DELACK_TIMEOUT - 0.001) == []
    (ack,) = advance(clock, st, 0.002)  # the delayed ACK, as a pure ACK
    assert ack.ack == peer.snd_nxt & M and not ack.payload
    user.conn.send(RESPONSE, clock.seconds())
    (seg,) = st.take()
    assert bytes(seg.payload) == RESPONSE


def test_an_unacknowledged_response_is_retransmitted():
    clock, st, peer, user, _ = server()
    peer.send_data(REQUEST)
    user.conn.send(RESPONSE, clock.seconds())
    (seg,) = st.take()
    # the client never acknowledges: the retransmission timer still runs
    out = []
    for _ in range(40):
        out += advance(clock, st, 0.05)
        if out:
            break
    assert [bytes(s.payload) for s in out] == [RESPONSE] and out[0].seq == seg.seq
    assert st.counters["tcp_rto"] == 1


def test_an_ack_in_the_fast_path_lets_queued_data_out():
    clock, st, peer, user, _ = server(wscale=7)
    conn = user.conn
    big = bytes(range(256)) * 200  # more than the initial congestion window
    conn.send(big, clock.seconds())
    first = st.take()
    assert first and conn.sndbuf.end > conn.snd_nxt  # some is held back by cwnd
    sent = sum(len(s.payload) for s in first)
    peer.rcv_nxt = (first[-1].seq + len(first[-1].payload)) & M
    out = peer.send_data(REQUEST)  # data + ACK of everything, same window
    assert out and out[0].seq == (first[-1].seq + len(first[-1].payload)) & M
    assert sum(len(s.payload) for s in out) > 0 and sent < len(big)
