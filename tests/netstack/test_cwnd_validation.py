"""Congestion window growth only while the window is used (RFC 7661 section 4,
Linux's tcp_is_cwnd_limited): the rule's edges in :class:`NewReno`, and the
same rule on the header-predicted (fused) path and the full RFC 9293 path of
a scripted connection (task.Clock)."""

from __future__ import annotations

import pytest

from nbgateway.netstack.congestion import NewReno
from nbgateway.netstack.tcp_conn import Connection
from nbgateway.netstack.tcp_wire import ACK

from .test_tcp_scripted import server

M = 0xFFFFFFFF
MSS = 1000
IW = 10 * MSS  # RFC 6928 for MSS 1000
REQUEST = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000


def _acked_once(cwnd: int, ssthresh: int, flight: int, acked: int) -> int:
    """cwnd after one ACK of ``acked`` bytes with ``flight`` outstanding
    before it, the first ACK of a round trip."""
    cc = NewReno(MSS, iss=0)
    cc.cwnd, cc.ssthresh = cwnd, ssthresh
    assert not cc.on_ack(acked, acked, flight)
    assert (cc.used, cc.used_end, cc.dupacks) == (flight, flight, 0)
    return cc.cwnd


def test_initial_window_and_no_measurement_yet():
    cc = NewReno(MSS, iss=77)
    assert (cc.cwnd, cc.used, cc.used_end) == (IW, 0, 77)


def test_slow_start_grows_only_above_half_the_window_used():
    # cwnd < 2 * used: exactly half the window in flight is not enough
    assert _acked_once(IW, 1 << 30, IW // 2, 2 * MSS) == IW
    assert _acked_once(IW, 1 << 30, IW // 2 + 1, 2 * MSS) == IW + 2 * MSS
    assert _acked_once(IW, 1 << 30, IW, 2 * MSS) == IW + 2 * MSS
    # the increase itself is as before: min(acked, 2 * SMSS) (RFC 3465, L=2)
    assert _acked_once(IW, 1 << 30, IW, 100) == IW + 100
    assert _acked_once(IW, 1 << 30, IW, 5 * MSS) == IW + 2 * MSS
    # one small segment in flight: no growth
    assert _acked_once(IW, 1 << 30, 500, 500) == IW


def test_congestion_avoidance_grows_only_when_the_window_was_full():
    cwnd = 20 * MSS
    # used + SMSS > cwnd: a full segment more could not have been sent
    assert _acked_once(cwnd, 5000, cwnd - MSS, MSS) == cwnd
    assert _acked_once(cwnd, 5000, cwnd - MSS + 1, MSS) == cwnd + MSS * MSS // cwnd
    assert _acked_once(cwnd, 5000, cwnd, MSS) == cwnd + 50
    assert _acked_once(cwnd, 5000, cwnd // 2, MSS) == cwnd
    # at least one byte per ACK, as before
    big = MSS * MSS + 7
    assert _acked_once(big, 5000, big, MSS) == big + 1


def test_the_highest_flight_of_the_round_trip_counts_for_a_batch_of_acks():
    """Several ACKs handled before the sender refills the window (one read of
    many datagrams): each sees a smaller flight, but the round trip's highest
    flight was the whole window, so every one of them grows cwnd."""
    for ssthresh in (1 << 30, 5000):
        cc = NewReno(MSS, iss=0)
        cc.ssthresh = ssthresh
        snd_max = IW
        ack, expected = 0, IW
        for _ in range(5):  # five ACKs of two segments each, no sending between
            flight = snd_max - ack
            ack += 2 * MSS
            cc.on_ack(2 * MSS, ack, flight)
            if ssthresh > expected:
                expected += 2 * MSS
            else:
                expected += MSS * MSS // expected
            assert cc.cwnd == expected and cc.used == IW and cc.used_end == snd_max
        # the round trip ended with the last ACK (ack == used_end); the next
        # ACK measures its own flight: one small segment, no growth
        cc.on_ack(100, ack + 100, 100)
        assert cc.cwnd == expected and (cc.used, cc.used_end) == (100, ack + 100)


def test_a_larger_flight_raises_used_and_extends_the_round_trip():
    cc = NewReno(MSS, iss=0)
    cc.on_ack(MSS, MSS, 3 * MSS)  # round trip up to SND.MAX 3000
    assert (cc.used, cc.used_end, cc.cwnd) == (3 * MSS, 3 * MSS, IW)
    cc.on_ack(MSS, 2 * MSS, 8 * MSS)  # SND.MAX 9000; 2 * used > cwnd now
    assert (cc.used, cc.used_end, cc.cwnd) == (8 * MSS, 9 * MSS, IW + MSS)
    cc.on_ack(MSS, 3 * MSS, 2 * MSS)  # a smaller flight keeps the highest
    assert (cc.used, cc.used_end, cc.cwnd) == (8 * MSS, 9 * MSS, IW + 2 * MSS)
    cc.on_ack(6 * MSS, 9 * MSS, 6 * MSS)  # covers used_end: still this round trip
    assert (cc.used, cc.used_end, cc.cwnd) == (8 * MSS, 9 * MSS, IW + 4 * MSS)
    cc.on_ack(MSS, 10 * MSS, MSS)  # SND.UNA was at used_end: a new round trip
    assert (cc.used, cc.used_end, cc.cwnd) == (MSS, 10 * MSS, IW + 4 * MSS)


def test_recovery_is_unchanged_and_ignores_the_rule():
    """RFC 6582: partial ACKs deflate and add back one SMSS, the full ACK sets
    cwnd from the flight, whatever ``used`` says."""
    cc = NewReno(MSS, iss=0)
    cc.cwnd = 20000
    for _ in range(3):
        cc.on_dupack(1, 20001, 20000)
    assert cc.in_recovery and (cc.ssthresh, cc.cwnd) == (10000, 13000)
    used = (cc.used, cc.used_end)
    assert cc.on_ack(5000, 5001, 20000)  # partial ACK
    assert cc.cwnd == 13000 - 5000 + MSS and (cc.used, cc.used_end) == used
    assert not cc.on_ack(15000, 20001, 15000)  # full ACK
    assert not cc.in_recovery and cc.cwnd == min(10000, max(0, MSS) + MSS) == 2 * MSS
    assert (cc.used, cc.used_end) == used


def _force_full_path(monkeypatch) -> None:
    monkeypatch.setattr(Connection, "_fast_path", lambda self, seg, now: False)


def _count_fused(monkeypatch) -> list:
    calls = []
    inner = Connection.predicted

    def predicted(self, *args):
        took = inner(self, *args)
        calls.append(took)
        return took

    monkeypatch.setattr(Connection, "predicted", predicted)
    return calls


@pytest.mark.parametrize("path", ["fused", "full"])
def test_keep_alive_of_small_responses_keeps_the_initial_window(path, monkeypatch):
    clock, st, peer, user, _ = server(ts=True, wscale=7)
    conn = user.conn
    iw = conn.cc.cwnd
    assert iw == min(10 * conn.mss, max(2 * conn.mss, 14600))
    if path == "full":
        _force_full_path(monkeypatch)
    else:
        fused = _count_fused(monkeypatch)
    for _ in range(300):
        peer.send_data(REQUEST)  # carries the ACK of the previous response
        clock.advance(0.0003)
        st.fire_timers()
        conn.send(RESPONSE, clock.seconds())
        segs = st.take()
        assert segs and sum(len(s.payload) for s in segs) == len(RESPONSE)
        peer.rcv_nxt = (segs[-1].seq + len(segs[-1].payload)) & M
        clock.advance(0.001)
        st.fire_timers()
        st.take()
    assert conn.cc.cwnd == iw and conn.cc.ssthresh == 1 << 30
    assert conn.cc.used == len(RESPONSE)
    if path == "fused":
        assert sum(fused) >= 290  # the exchange's ACKs took the fused path


def _ack_all_pairwise(peer, segs, wnd=65535) -> list:
    """The peer ACKs ``segs`` two at a time (delayed ACKs); what the stack
    sends in answer to each ACK, in order."""
    out = []
    for i in range(1, len(segs), 2):
        s = segs[i]
        peer.rcv_nxt = (s.seq + len(s.payload)) & M
        out += peer.tx(ACK, wnd=wnd)
    if len(segs) % 2:
        s = segs[-1]
        peer.rcv_nxt = (s.seq + len(s.payload)) & M
        out += peer.tx(ACK, wnd=wnd)
    return out


@pytest.mark.parametrize("path", ["fused", "full"])
def test_bulk_after_many_small_responses_goes_out_in_cwnd_sized_flights(path, monkeypatch):
    """No burst to the peer's receive window (8 MB here): the first flight of
    the bulk response is the initial window, each later one what slow start
    allows, one round trip at a time."""
    clock, st, peer, user, _ = server(ts=True, wscale=7)
    conn = user.conn
    mss = conn.mss
    iw = conn.cc.cwnd
    if path == "full":
        _force_full_path(monkeypatch)
    for _ in range(100):
        peer.send_data(REQUEST)
        conn.send(RESPONSE, clock.seconds())
        segs = st.take()
        peer.rcv_nxt = (segs[-1].seq + len(segs[-1].payload)) & M
        clock.advance(0.001)
    peer.tx(ACK)  # the last response acknowledged
    assert conn.snd_una == conn.snd_max and conn.cc.cwnd == iw
    conn.send(b"b" * 400_000, clock.seconds())
    flight = st.take()
    assert sum(len(s.payload) for s in flight) == iw
    expected = iw
    for _ in range(4):  # slow start doubles the flight per round trip (ACK every 2)
        clock.advance(0.01)
        flight = _ack_all_pairwise(peer, flight)
        expected *= 2
        assert conn.cc.cwnd == expected
        assert sum(len(s.payload) for s in flight) == expected
        assert conn.snd_max - conn.snd_una == expected
    assert conn.snd_wnd > 16 * iw and expected % mss == 0


@pytest.mark.parametrize("path", ["fused", "full"])
def test_bulk_congestion_avoidance_grows_per_ack_as_before(path, monkeypatch):
    clock, st, peer, user, _ = server(ts=True, wscale=7)
    conn = user.conn
    mss = conn.mss
    if path == "full":
        _force_full_path(monkeypatch)
    conn.cc.ssthresh = conn.cc.cwnd  # congestion avoidance from the start
    conn.send(b"c" * 600_000, clock.seconds())
    flight = st.take()
    cwnd = conn.cc.cwnd
    for _ in range(4):
        clock.advance(0.01)
        acks = (len(flight) + 1) // 2
        flight = _ack_all_pairwise(peer, flight)
        for _ in range(acks):  # the increase per ACK of new data, as before
            cwnd += max(1, mss * mss // cwnd)
        assert conn.cc.cwnd == cwnd
        assert conn.snd_max - conn.snd_una <= cwnd
    # grown by SMSS*SMSS/cwnd per ACK, an ACK per two segments: about half a
    # segment per round trip
    assert 10 * mss + 3 * mss // 2 <= cwnd < 10 * mss + 2 * mss


@pytest.mark.parametrize("path", ["fused", "full"])
def test_a_window_limited_by_the_receiver_does_not_grow_cwnd(path, monkeypatch):
    """The peer's window (4 segments) caps the flight: cwnd is not used, so
    it stays where it was (RFC 7661: not validated)."""
    clock, st, peer, user, _ = server(ts=True)
    conn = user.conn
    mss = conn.mss
    iw = conn.cc.cwnd
    if path == "full":
        _force_full_path(monkeypatch)
    peer.tx(ACK, wnd=4 * mss)
    conn.send(b"r" * 100_000, clock.seconds())
    flight = st.take()
    for _ in range(5):
        assert sum(len(s.payload) for s in flight) == 4 * mss
        clock.advance(0.01)
        flight = _ack_all_pairwise(peer, flight, wnd=4 * mss)
    assert conn.cc.cwnd == iw and conn.cc.used == 4 * mss


@pytest.mark.parametrize("path", ["fused", "full"])
def test_slow_start_after_a_timeout_grows_from_the_loss_window(path, monkeypatch):
    """RFC 5681 3.1: after an RTO cwnd is one segment; the retransmissions
    are cwnd-limited (the whole un-acked window still counts as flight), so
    slow start grows again with every ACK."""
    clock, st, peer, user, _ = server(ts=True, wscale=7)
    conn = user.conn
    mss = conn.mss
    if path == "full":
        _force_full_path(monkeypatch)
    conn.send(b"t" * (10 * mss), clock.seconds())
    sent = st.take()
    assert len(sent) == 10
    clock.advance(conn.rtx_at - clock.seconds())
    st.fire_timers()
    (rtx,) = st.take()
    assert rtx.seq == sent[0].seq and conn.cc.cwnd == mss
    peer.rcv_nxt = (rtx.seq + mss) & M
    out = peer.tx(ACK)
    assert conn.cc.cwnd == 2 * mss and conn.cc.used == 10 * mss
    assert [s.seq for s in out] == [sent[1].seq, sent[2].seq]
    peer.rcv_nxt = (out[-1].seq + mss) & M
    out = peer.tx(ACK)
    assert conn.cc.cwnd == 4 * mss and len(out) == 4
