"""Restart after idle (RFC 5681 section 4.1, Linux's tcp_cwnd_restart with
tcp_slow_start_after_idle=1): the rule in :class:`NewReno` and on the send
paths of a scripted connection (task.Clock): the inline single-segment send,
the output run, the header-predicted (fused) and the full input path, a
window reopening after zero-window probes; retransmission and persist
timers as before."""

from __future__ import annotations

import pytest

from nbgateway.netstack.congestion import NewReno, initial_window
from nbgateway.netstack.tcp_conn import Connection
from nbgateway.netstack.tcp_wire import ACK

from . import test_tcp_fastpath
from .test_cwnd_validation import REQUEST, _ack_all_pairwise
from .test_tcp_scripted import server

twin = test_tcp_fastpath.twin  # the fused/general stack pair fixture
M = 0xFFFFFFFF
MSS = 1000
IW = 10 * MSS


def _cc(cwnd: int, ssthresh: int = 1 << 30) -> NewReno:
    cc = NewReno(MSS, iss=0)
    cc.cwnd, cc.ssthresh = cwnd, ssthresh
    return cc


def test_initial_window_is_rfc_6928():
    assert [initial_window(m) for m in (536, 1000, 1228, 1460, 8000)] == [
        5360, 10000, 12280, 14600, 16000]
    assert NewReno(1228, iss=0).cwnd == 12280


def test_no_restart_within_one_rto():
    cc = _cc(64 * MSS, 20 * MSS)
    assert not cc.restart_after_idle(0.2, 0.2)  # not more than one RTO
    assert not cc.restart_after_idle(0.0, 0.2)
    assert (cc.cwnd, cc.ssthresh) == (64 * MSS, 20 * MSS)


@pytest.mark.parametrize(("idle", "halvings"), [
    (0.2001, 1), (0.3, 1), (0.4, 1), (0.41, 2), (0.6, 2), (0.7, 3), (0.8, 3)])
def test_cwnd_halves_once_per_rto_after_the_first(idle, halvings):
    """Linux's loop: ``while ((delta -= rto) > 0 && cwnd > rw) cwnd >>= 1``,
    i.e. ceil(idle / RTO) - 1 halvings."""
    cc = _cc(160 * MSS)
    assert cc.restart_after_idle(idle, 0.2)
    assert cc.cwnd == (160 * MSS) >> halvings


def test_floor_is_the_restart_window():
    cc = _cc(160 * MSS)
    assert cc.restart_after_idle(3600.0, 0.2)  # an hour: bounded by RW
    assert cc.cwnd == IW
    cc = _cc(25 * MSS)  # 25 -> 12.5 would go below IW: RW it is
    assert cc.restart_after_idle(0.5, 0.2) and cc.cwnd == IW
    # below the initial window RW = cwnd: nothing shrinks (an RTO's loss
    # window stays as it is, it does not grow to IW either)
    for cwnd in (MSS, 4 * MSS, IW):
        cc = _cc(cwnd)
        assert cc.restart_after_idle(10.0, 0.2) and cc.cwnd == cwnd


def test_ssthresh_keeps_three_quarters_of_the_old_window():
    cc = _cc(64 * MSS, 20 * MSS)  # after an earlier loss
    assert cc.restart_after_idle(1.0, 0.2)
    assert (cc.cwnd, cc.ssthresh) == (IW, 48 * MSS)
    cc = _cc(64 * MSS, 50 * MSS)  # already above 3/4: kept
    assert cc.restart_after_idle(1.0, 0.2) and cc.ssthresh == 50 * MSS
    cc = _cc(64 * MSS)  # never lost: unchanged
    assert cc.restart_after_idle(1.0, 0.2) and cc.ssthresh == 1 << 30
    cc = _cc(64 * MSS, 20 * MSS)
    cc.in_recovery = True  # Linux's tcp_current_ssthresh in a reduction
    assert cc.restart_after_idle(1.0, 0.2) and cc.ssthresh == 20 * MSS


def _force_full_path(monkeypatch) -> None:
    monkeypatch.setattr(Connection, "_fast_path", lambda self, seg, now: False)


def _grown(path, monkeypatch):
    """A connection whose bulk transfer grew cwnd to 16 IW in slow start,
    everything acknowledged (nothing in flight)."""
    clock, st, peer, user, _ = server(ts=True, wscale=7)
    conn = user.conn
    if path == "full":
        _force_full_path(monkeypatch)
    iw = conn.cc.cwnd
    conn.send(b"g" * (15 * iw), clock.seconds())
    flight = st.take()
    for _ in range(4):
        clock.advance(0.01)
        flight = _ack_all_pairwise(peer, flight)
    assert flight == [] and conn.snd_una == conn.snd_max == conn.sndbuf.end
    assert conn.cc.cwnd == 16 * iw and conn.rtx_at is None
    assert conn.rto.current() == 0.2 and conn.rto.backoff == 0
    user.peer = peer
    return clock, st, peer, conn, iw


def _flight(conn, st, clock, n: int) -> list:
    conn.send(b"b" * n, clock.seconds())
    out = st.take()
    peer = conn.user.peer
    for s in out:  # the peer echoes the newest timestamp (no stale RTT samples)
        peer.ts_ecr = s.ts_val
    return out


def _first_flight(conn, st, clock, n=400_000) -> int:
    return sum(len(s.payload) for s in _flight(conn, st, clock, n))


def _idle(clock, conn, idle: float) -> None:
    """Advance the clock to ``idle`` seconds after the last data sent."""
    clock.advance(conn.last_send + idle - clock.seconds())


@pytest.mark.parametrize("path", ["fused", "full"])
def test_sending_within_an_rto_keeps_the_window(path, monkeypatch):
    clock, st, _peer, conn, iw = _grown(path, monkeypatch)
    _idle(clock, conn, 0.19)
    assert _first_flight(conn, st, clock) == 16 * iw
    assert conn.cc.cwnd == 16 * iw and st.counters["tcp_idle_restarts"] == 0


@pytest.mark.parametrize("path", ["fused", "full"])
@pytest.mark.parametrize(("idle", "factor"), [(0.3, 8), (0.5, 4), (0.7, 2), (0.75, 2),
                                              (1.0, 1), (300.0, 1)])
def test_bulk_after_idle_leaves_in_the_restarted_window(path, idle, factor, monkeypatch):
    """The output run (a response larger than a segment): halved once per
    RTO of idle time beyond the first, not below IW; ssthresh 3/4 of the
    old window (12 IW) when an earlier loss had set it lower."""
    clock, st, _peer, conn, iw = _grown(path, monkeypatch)
    conn.cc.ssthresh = 4 * iw  # as after an earlier loss
    _idle(clock, conn, idle)
    assert _first_flight(conn, st, clock) == factor * iw == conn.cc.cwnd
    assert conn.cc.ssthresh == 12 * iw
    assert st.counters["tcp_idle_restarts"] == 1
    assert conn.last_send == clock.seconds()


@pytest.mark.parametrize("path", ["fused", "full"])
def test_a_single_segment_response_after_idle_restarts_too(path, monkeypatch):
    """The inline single-segment send of Connection.send checks as well: the
    segment goes out, the window behind it is the restarted one."""
    clock, st, peer, conn, iw = _grown(path, monkeypatch)
    _idle(clock, conn, 0.5)
    peer.send_data(REQUEST)  # a request after the pause: no reset of idle time
    conn.send(b"small response", clock.seconds())
    (seg,) = st.take()
    assert bytes(seg.payload) == b"small response"
    assert conn.cc.cwnd == 4 * iw and st.counters["tcp_idle_restarts"] == 1


@pytest.mark.parametrize("path", ["fused", "full"])
def test_idle_counts_from_the_last_data_sent_not_the_last_received(path, monkeypatch):
    """A keep-alive server: requests and ACKs keep arriving, but it sent no
    data for 0.5 s (2.5 RTO): restart, as Linux does (lsndtime); RFC 5681
    4.1 notes that timing from the last received segment would never
    restart a persistent HTTP connection."""
    clock, st, peer, conn, iw = _grown(path, monkeypatch)
    for _ in range(5):
        clock.advance(0.1)
        peer.tx(ACK)  # a pure ACK (a window update of the peer)
        st.fire_timers()
    peer.send_data(REQUEST)
    assert conn.last_rcv == clock.seconds()
    assert _first_flight(conn, st, clock) == 4 * iw


@pytest.mark.parametrize("path", ["fused", "full"])
def test_restart_is_not_applied_twice_for_one_idle_period(path, monkeypatch):
    clock, st, peer, conn, iw = _grown(path, monkeypatch)
    _idle(clock, conn, 0.3)  # one halving
    flight = _flight(conn, st, clock, 3 * iw)
    assert sum(len(s.payload) for s in flight) == 3 * iw
    clock.advance(0.01)
    assert _ack_all_pairwise(peer, flight) == []
    assert conn.snd_una == conn.snd_max
    assert conn.cc.cwnd == 8 * iw and st.counters["tcp_idle_restarts"] == 1
    # sent within an RTO of the last data: the window of 8 IW, not 4 IW
    assert _first_flight(conn, st, clock) == 8 * iw


@pytest.mark.parametrize("path", ["fused", "full"])
def test_app_limited_small_responses_then_idle_then_bulk(path, monkeypatch):
    """The validation rule and the restart together: small responses after
    the bulk keep cwnd where it was (not used, not grown); a pause then
    restarts it, and a later bulk response grows from there by slow start,
    one round trip at a time, only as it is used."""
    clock, st, peer, conn, iw = _grown(path, monkeypatch)
    for _ in range(50):  # one response per request, 10 ms apart
        clock.advance(0.01)
        peer.send_data(REQUEST)
        conn.send(b"r" * 300, clock.seconds())
        (seg,) = st.take()
        peer.rcv_nxt = (seg.seq + len(seg.payload)) & M
        peer.ts_ecr = seg.ts_val
    peer.tx(ACK)
    assert conn.cc.cwnd == 16 * iw and st.counters["tcp_idle_restarts"] == 0
    _idle(clock, conn, 2.0)  # ten RTOs: down to the restart window
    peer.send_data(REQUEST)
    flight = _flight(conn, st, clock, 1_000_000)
    assert sum(len(s.payload) for s in flight) == iw == conn.cc.cwnd
    assert conn.cc.ssthresh == 1 << 30  # never lost: slow start from IW
    expected = iw
    for _ in range(3):
        clock.advance(0.01)
        flight = _ack_all_pairwise(peer, flight)
        expected *= 2
        assert conn.cc.cwnd == expected == sum(len(s.payload) for s in flight)
    assert st.counters["tcp_idle_restarts"] == 1


@pytest.mark.parametrize("path", ["fused", "full"])
def test_retransmission_timer_is_unaffected(path, monkeypatch):
    """Data in flight is never restarted, however long the peer is silent:
    the RTO fires and backs off as before (cwnd one segment, RFC 5681 3.1),
    and after the ACK the next data goes out without an idle restart (the
    retransmissions were data sent)."""
    clock, st, peer, conn, _ = _grown(path, monkeypatch)
    calls = []
    restart = Connection._idle_restart
    monkeypatch.setattr(Connection, "_idle_restart",
                        lambda self, now: (calls.append(now), restart(self, now)))
    mss = conn.mss
    conn.send(b"d" * (4 * mss), clock.seconds())
    sent = st.take()
    assert len(sent) == 4
    t0 = clock.seconds()
    times = []
    for _ in range(3):
        clock.advance(conn.rtx_at - clock.seconds())
        st.fire_timers()
        (rtx,) = st.take()
        assert rtx.seq == sent[0].seq
        times.append(round(clock.seconds() - t0, 6))
        conn.send(b"q" * 10, clock.seconds())  # queued: in flight, no restart
        assert st.take() == []
    assert times == [0.2, 0.6, 1.4]  # 0.2, then doubled (RFC 6298 5.5)
    assert conn.cc.cwnd == mss and conn.cc.ssthresh == 2 * mss
    clock.advance(0.01)
    peer.rcv_nxt = (sent[-1].seq + mss) & M
    out = peer.tx(ACK)  # everything acknowledged; the queued 30 bytes go
    assert sum(len(s.payload) for s in out) == 30
    assert st.counters["tcp_idle_restarts"] == 0 and st.counters["tcp_rto"] == 3
    assert calls == []  # not even considered: the go-back-N resends are not a new flight


@pytest.mark.parametrize("path", ["fused", "full"])
def test_zero_window_probes_as_before_and_a_restart_when_it_opens(path, monkeypatch):
    """Persist timer unaffected (first probe one RTO after the stall, then
    doubling); the probes are not data sent for the rule (Linux's carry no
    data), so the window reopening after 1.4 s (7 RTOs) restarts."""
    clock, st, peer, conn, iw = _grown(path, monkeypatch)
    peer.tx(ACK, wnd=0)
    conn.send(b"z" * 100_000, clock.seconds())
    assert st.take() == []
    t0 = clock.seconds()
    probes = []
    for _ in range(3):
        clock.advance(conn.persist_at - clock.seconds())
        st.fire_timers()
        (p,) = st.take()
        assert len(p.payload) == 1
        probes.append(round(clock.seconds() - t0, 6))
        peer.tx(ACK, wnd=0)  # still closed, the byte not accepted
    assert probes == [0.2, 0.6, 1.4] and st.counters["tcp_window_probes"] == 3
    assert conn.cc.cwnd == 16 * iw and st.counters["tcp_idle_restarts"] == 0
    out = peer.tx(ACK, wnd=65535)  # opens (the probe byte not acknowledged)
    assert conn.cc.cwnd == iw and st.counters["tcp_idle_restarts"] == 1
    assert sum(len(s.payload) for s in out) == iw


def _twin_ack_pairs(twin, segs) -> list:
    """The twin's peer ACKs ``segs`` two at a time; what both stacks send."""
    out = []
    ends = [segs[i] for i in range(1, len(segs), 2)] + ([segs[-1]] if len(segs) % 2 else [])
    for s in ends:
        twin.ack = (s.seq + len(s.payload)) & M
        out += twin.feed([twin.send(b"")])
    return out


def test_inline_send_and_output_run_restart_alike(twin):
    """The fused stack (inline single-segment send, fused emit, header
    prediction) and the general one restart the same way, byte for byte
    (Twin.compare: packets, counters, every connection field)."""
    conn = twin.conns[0][0]
    iw = conn.cc.cwnd
    flight = twin.write(b"g" * (7 * iw))  # slow start: IW, 2 IW, 4 IW
    for _ in range(3):
        twin.advance(0.005)
        flight = _twin_ack_pairs(twin, flight)
    assert flight == [] and conn.snd_una == conn.snd_max
    assert conn.cc.cwnd == 8 * iw and conn.rto.current() == 0.2
    twin.advance(conn.last_send + 0.5 - twin.clocks[0].seconds())  # 2.5 RTOs
    twin.feed([twin.send(b"GET / HTTP/1.1\r\n\r\n")])
    before = twin.stacks[0].tcp.fast.emits
    assert len(twin.write(b"R" * 300)) == 1
    assert twin.stacks[0].tcp.fast.emits == before + 1  # the inline send took it
    for stack, c in zip(twin.stacks, (conn, twin.conns[1][0]), strict=True):
        assert c.cc.cwnd == 2 * iw and stack.counters["tcp_idle_restarts"] == 1
    out = twin.write(b"B" * (4 * iw))  # the rest of the restarted window
    assert sum(len(s.payload) for s in out) == 2 * iw - 300 - (2 * iw - 300) % conn.mss
