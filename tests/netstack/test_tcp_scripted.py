"""The TCP state machine against hand-scripted segment sequences (task.Clock)."""

from __future__ import annotations

import ipaddress
import itertools

from twisted.internet.task import Clock

from nbgateway.netstack.congestion import RTO_MIN
from nbgateway.netstack.tcp_const import (
    ACK_EVERY,
    DELACK_TIMEOUT,
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    RCV_WSCALE,
)
from nbgateway.netstack.tcp_wire import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    build_segment,
    sack_option,
    syn_options,
    ts_option,
)
from nbgateway.netstack.testing import rcv_wire, snd_wire

from .tcp_fakes import A4, B4, FakeStack, RecordingUser, listen_recording, make_pair

M = 0xFFFFFFFF


class Peer:
    """A scripted remote end talking to ``st`` (the stack under test)."""

    def __init__(self, st: FakeStack, ip=A4, port=40000, dport=80, isn=5000, ts=False,
                 sack=True, wscale=None, mss=1200):
        self.st, self.ip, self.port, self.dport = st, ip, port, dport
        self.snd_nxt = isn
        self.rcv_nxt = 0
        self.ts, self.sack, self.wscale, self.mss = ts, sack, wscale, mss
        self.tsv = 1000
        self.ts_ecr = 0

    def tx(self, flags, payload=b"", seq=None, ack=None, wnd=65535, opts=b"", tsv=None):
        if self.ts and not flags & SYN:
            opts = ts_option(self.tsv if tsv is None else tsv, self.ts_ecr) + opts
        seg = build_segment(self.port, self.dport, self.snd_nxt if seq is None else seq,
                            self.rcv_nxt if ack is None else ack, flags, wnd, opts, payload)
        self.st.inject(self.ip, B4, seg)
        out = self.st.take()
        for s in out:
            if s.ts_val is not None:
                self.ts_ecr = s.ts_val
        return out

    def handshake(self):
        opts = syn_options(self.mss, self.wscale, self.sack, (self.tsv, 0) if self.ts else None)
        (synack,) = self.tx(SYN, opts=opts, ack=0)
        assert synack.flags == SYN | ACK and synack.ack == (self.snd_nxt + 1) & M
        self.snd_nxt += 1
        self.rcv_nxt = (synack.seq + 1) & M
        assert self.tx(ACK) == []
        return synack

    def send_data(self, payload, **kw):
        out = self.tx(ACK | PSH, payload, **kw)
        self.snd_nxt += len(payload)
        return out


def server(**peer_kw):
    clock = Clock()
    clock.advance(1000.0)
    st = FakeStack(clock, [B4])
    _, acc = listen_recording(st, 80)
    peer = Peer(st, **peer_kw)
    synack = peer.handshake()
    assert len(acc) == 1
    return clock, st, peer, acc[0], synack


def advance(clock, st, dt):
    clock.advance(dt)
    st.fire_timers()
    return st.take()


def test_passive_handshake_options():
    _, _, _, user, synack = server(ts=True, wscale=7, mss=1400)
    assert synack.mss == 1240  # clamped to MTU 1280 - 40
    assert synack.wscale == RCV_WSCALE and synack.sack_perm
    assert synack.ts_ecr == 1000 and synack.ts_val is not None
    conn = user.conn
    assert conn.state_name == "ESTABLISHED"
    assert conn.snd_wscale == 7 and conn.ts_ok and conn.sack_ok
    assert conn.mss == 1240 - 12  # peer 1400 > ours; timestamps take 12 bytes
    _, _, _, user, synack = server(ts=False, sack=False, mss=536)
    assert synack.wscale is None and not synack.sack_perm and synack.ts_val is None
    assert user.conn.mss == 536 and user.conn.snd_wscale == 0


def test_active_open_and_syn_ack_with_data_ack():
    clock = Clock()
    st = FakeStack(clock, [A4])
    u = RecordingUser()
    conn = st.tcp.connect(B4, 443, u)
    (syn,) = st.take()
    assert syn.flags == SYN and syn.mss == 1240 and syn.wscale == RCV_WSCALE and syn.sack_perm
    assert syn.ts_val is not None and syn.ts_ecr == 0
    # SYN-ACK with a bad ACK number gets RST and changes nothing
    st.inject(B4, A4, build_segment(443, conn.lport, 7000, syn.seq + 5, SYN | ACK, 1000))
    (rst,) = st.take()
    assert rst.flags == RST and rst.seq == (syn.seq + 5) & M
    assert conn.state_name == "SYN-SENT"
    st.inject(B4, A4, build_segment(443, conn.lport, 7000, syn.seq + 1, SYN | ACK, 1000,
                                    syn_options(1000, None, False, None)))
    (ack,) = st.take()
    assert ack.flags == ACK and ack.ack == 7001 and conn.state_name == "ESTABLISHED"
    assert u.established and not conn.ts_ok and conn.mss == 1000 and conn.snd_wnd == 1000


def test_retransmission_backoff_and_karn():
    clock, st, peer, user, _ = server()
    conn = user.conn
    rto0 = conn.rto.current()
    assert rto0 == RTO_MIN  # one near-zero RTT sample from the handshake
    conn.send(b"a" * 100, clock.seconds())
    (d,) = st.take()
    assert d.seq == peer.rcv_nxt and bytes(d.payload) == b"a" * 100
    times = []
    for _ in range(3):
        t = st.tcp.next_deadline()
        clock.advance(t - clock.seconds())
        times.append(clock.seconds())
        st.fire_timers()
        (r,) = st.take()
        assert r.seq == d.seq and bytes(r.payload) == b"a" * 100
    assert [round(b - a, 6) for a, b in zip([1000.0, *times], times, strict=False)] == [
        RTO_MIN, 2 * RTO_MIN, 4 * RTO_MIN]
    assert conn.cc.cwnd == conn.mss  # loss window after RTO
    srtt = conn.rto.srtt
    clock.advance(1.5)
    peer.rcv_nxt += 100
    peer.tx(ACK)  # ACKs a retransmitted segment: Karn, no RTT sample
    assert conn.rto.srtt == srtt and conn.rto.backoff == 3
    assert conn.timer_at is None  # nothing outstanding
    conn.send(b"b" * 10, clock.seconds())
    st.take()
    assert conn.rtx_at == clock.seconds() + 8 * RTO_MIN  # backoff kept (Karn)
    clock.advance(0.05)
    peer.rcv_nxt += 10
    peer.tx(ACK)  # fresh segment: valid sample, backoff cleared
    assert conn.rto.backoff == 0 and conn.rto.srtt != srtt


def test_fast_retransmit_and_newreno_partial_ack():
    clock, st, peer, user, _ = server()
    conn = user.conn
    mss = conn.mss
    conn.send(bytes(range(256)) * 60, clock.seconds())  # 15360 bytes
    segs = st.take()
    assert len(segs) == 10 and all(len(s.payload) == mss for s in segs)  # IW10
    base = peer.rcv_nxt
    # segment 0 lost; segments 1.. arrive and produce duplicate ACKs; the first
    # two each release one new segment (RFC 3042 limited transmit)
    (lt1,) = peer.tx(ACK)
    (lt2,) = peer.tx(ACK)
    assert (lt1.seq, lt2.seq) == ((base + 10 * mss) & M, (base + 11 * mss) & M)
    (rtx,) = peer.tx(ACK)  # third duplicate ACK
    assert rtx.seq == base and len(rtx.payload) == mss
    assert conn.cc.in_recovery and st.counters["tcp_fast_retransmits"] == 1
    ssthresh = conn.cc.ssthresh
    assert ssthresh == 6 * mss  # half of the 12 segments in flight
    more = peer.tx(ACK)  # inflation lets new data out
    assert conn.cc.cwnd == ssthresh + 4 * mss
    assert all(s.seq >= (base + 10 * mss) & M for s in more)
    # partial ACK (segment 5 also lost): retransmit it at once
    out = peer.tx(ACK, ack=(base + 5 * mss) & M)
    assert out and out[0].seq == (base + 5 * mss) & M and conn.cc.in_recovery
    # full ACK of everything sent before recovery began ends recovery
    peer.tx(ACK, ack=snd_wire(conn, conn.cc.recover))
    assert not conn.cc.in_recovery and conn.cc.cwnd <= ssthresh


def test_out_of_order_reassembly_and_sack_blocks():
    _clock, _st, peer, user, _ = server(ts=True)
    s0 = peer.snd_nxt
    (dup,) = peer.tx(ACK, b"B" * 100, seq=s0 + 100)
    assert dup.ack == s0 & M and dup.sack_blocks == (((s0 + 100) & M, (s0 + 200) & M),)
    (dup,) = peer.tx(ACK, b"D" * 100, seq=s0 + 300)
    # the most recent block first (RFC 2018 4)
    assert dup.sack_blocks == (((s0 + 300) & M, (s0 + 400) & M),
                               ((s0 + 100) & M, (s0 + 200) & M))
    (dup,) = peer.tx(ACK, b"C" * 100, seq=s0 + 200)  # joins the two blocks
    assert dup.sack_blocks == (((s0 + 100) & M, (s0 + 400) & M),)
    assert user.data == b""
    (ack,) = peer.tx(ACK, b"A" * 100, seq=s0)  # fills the hole: immediate ACK
    assert ack.ack == (s0 + 400) & M and ack.sack_blocks == ()
    assert user.data == b"A" * 100 + b"B" * 100 + b"C" * 100 + b"D" * 100
    # overlapping retransmission with new bytes after it
    peer.tx(ACK, b"D" * 50 + b"E" * 100, seq=s0 + 350)
    assert user.data.endswith(b"D" * 100 + b"E" * 100)


def test_out_of_order_fin_waits_for_data():
    _clock, _st, peer, user, _ = server()
    s0 = peer.snd_nxt
    peer.tx(ACK | FIN, b"late", seq=s0 + 5)
    assert not user.eof and user.conn.state_name == "ESTABLISHED"
    peer.tx(ACK, b"early", seq=s0)
    assert user.data == b"earlylate" and user.eof and user.conn.state_name == "CLOSE-WAIT"


def test_delayed_ack_coalescing():
    clock, st, peer, user, _ = server()
    assert peer.send_data(b"x" * 100) == []  # first segment: ACK delayed
    # second segment: ACKed at the end of this reactor turn (a deadline of "now")
    assert peer.send_data(b"y" * 100) == []
    assert st.tcp.next_deadline() == clock.seconds()
    (ack,) = advance(clock, st, 0)
    assert ack.ack == peer.snd_nxt & M
    # a burst within one turn: one ACK per ACK_EVERY segments, the rest at turn end
    acks = []
    for _ in range(ACK_EVERY + 3):
        acks += peer.send_data(b"b" * 100)
    assert len(acks) == 1 and acks[0].ack == (peer.snd_nxt - 300) & M
    (ack,) = advance(clock, st, 0)
    assert ack.ack == peer.snd_nxt & M
    assert peer.send_data(b"z" * 10) == []
    (ack,) = advance(clock, st, DELACK_TIMEOUT)
    assert ack.ack == peer.snd_nxt & M
    # a reply piggybacks the ACK
    peer.send_data(b"q")
    user.conn.send(b"reply", clock.seconds())
    (seg,) = st.take()
    assert bytes(seg.payload) == b"reply" and seg.ack == peer.snd_nxt & M
    assert advance(clock, st, DELACK_TIMEOUT) == []


def test_zero_window_probing():
    clock, st, peer, user, _ = server()
    conn = user.conn
    peer.tx(ACK, wnd=0)
    conn.send(b"w" * 5000, clock.seconds())
    assert st.take() == []  # nothing fits
    probes = []
    for _ in range(3):
        t = st.tcp.next_deadline()
        clock.advance(t - clock.seconds())
        probes.append(clock.seconds())
        st.fire_timers()
        (p,) = st.take()
        assert len(p.payload) == 1 and p.seq == peer.rcv_nxt & M
        peer.tx(ACK, wnd=0)  # still closed, byte not accepted
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(probes)]
    assert gaps[1] == 2 * gaps[0]  # exponential backoff
    assert conn.state_name == "ESTABLISHED" and st.counters["tcp_window_probes"] == 3
    out = peer.tx(ACK, wnd=65535)  # window opens
    assert sum(len(s.payload) for s in out) == 5000 and out[0].seq == peer.rcv_nxt & M


def test_rst_handling_rfc5961():
    _clock, st, peer, user, _ = server()
    conn = user.conn
    s0 = peer.snd_nxt
    assert peer.tx(RST, seq=s0 + 1000000) == []  # outside the window: dropped silently
    (chal,) = peer.tx(RST, seq=s0 + 10)  # in window but not exact: challenge ACK
    assert chal.flags == ACK and chal.ack == s0 & M
    assert conn.state_name == "ESTABLISHED" and st.counters["tcp_challenge_acks"] == 1
    (chal,) = peer.tx(SYN, seq=s0 + 3)  # SYN on a synchronized connection
    assert chal.flags == ACK and conn.state_name == "ESTABLISHED"
    assert peer.tx(RST, seq=s0) == []  # exact: reset
    assert conn.state_name == "CLOSED" and type(user.closed[0]).__name__ == "ConnectionLost"
    assert not st.tcp.conns


def test_unacceptable_acks():
    clock, st, peer, user, _ = server()
    conn = user.conn
    conn.send(b"hello", clock.seconds())
    st.take()
    (ack,) = peer.tx(ACK, ack=peer.rcv_nxt + 100)  # acks unsent data: ACK and drop
    assert ack.flags == ACK and snd_wire(conn, conn.snd_una) == peer.rcv_nxt & M  # not advanced
    (chal,) = peer.tx(ACK, ack=(peer.rcv_nxt - 10_000_000) & M)  # far too old: challenge
    assert chal.flags == ACK
    (ack,) = peer.tx(ACK, b"x", seq=peer.snd_nxt + 10_000_000)  # out of window data
    assert ack.ack == peer.snd_nxt & M and user.data == b""


def test_paws_drops_old_timestamp():
    _clock, st, peer, user, _ = server(ts=True)
    peer.tsv = 5000
    peer.send_data(b"new")
    peer.tsv = 10  # older than TS.Recent
    (_ack,) = peer.tx(ACK, b"old", seq=peer.snd_nxt)
    assert user.data == b"new" and st.counters["tcp_paws_drops"] == 1


def test_keepalive_probes_and_timeout():
    clock, st, peer, user, _ = server()
    conn = user.conn
    conn.set_keepalive(True, clock.seconds())
    (probe,) = advance(clock, st, KEEPALIVE_IDLE)
    assert probe.flags == ACK and probe.seq == (peer.rcv_nxt - 1) & M and not probe.payload
    peer.tx(ACK)  # answered: the connection lives
    assert advance(clock, st, KEEPALIVE_INTERVAL) == []
    (probe,) = advance(clock, st, KEEPALIVE_IDLE - KEEPALIVE_INTERVAL)
    for _ in range(KEEPALIVE_COUNT - 1):
        (probe,) = advance(clock, st, KEEPALIVE_INTERVAL)
    assert conn.state_name == "ESTABLISHED"
    advance(clock, st, KEEPALIVE_INTERVAL)
    assert conn.state_name == "CLOSED" and type(user.closed[0]).__name__ == "TCPTimedOutError"


def test_time_wait_retransmitted_fin_and_bound():
    clock, a, b, w = make_pair()
    a.tcp.max_time_wait = 3
    _, acc = listen_recording(b, 80)
    users = []
    for _ in range(5):
        u = RecordingUser()
        users.append((u, a.tcp.connect(B4, 80, u)))
    w.run(until=lambda: len(acc) == 5)
    for _, c in users:
        c.close(clock.seconds())
    w.pump()
    for s in acc:
        s.conn.close(clock.seconds())
    w.pump()
    assert len(a.tcp.time_wait) == 3 and a.counters["tcp_time_wait_evicted"] == 2
    assert sum(c.state_name == "TIME-WAIT" for _, c in users) == 3
    # a retransmitted FIN in TIME-WAIT is ACKed again
    c = next(c for _, c in users if c.state_name == "TIME-WAIT")
    a.inject(B4, A4, build_segment(80, c.lport, rcv_wire(c, c.rcv_nxt - 1),
                                   snd_wire(c, c.snd_nxt), FIN | ACK, 1000, ts_option(1, 1)))
    (ack,) = a.take()
    assert ack.flags == ACK and ack.ack == rcv_wire(c, c.rcv_nxt)
    # an RST does not end TIME-WAIT (RFC 1337)
    a.inject(B4, A4, build_segment(80, c.lport, rcv_wire(c, c.rcv_nxt), 0, RST, 0))
    assert c.state_name == "TIME-WAIT"
    w.run()
    assert not a.tcp.time_wait and not a.tcp.conns


def test_syn_flood_uses_cookies_and_legit_client_connects():
    clock, a, b, w = make_pair()
    _, acc = listen_recording(b, 80, max_half_open=8, backlog=16)
    # 2000 spoofed SYNs from random sources that never answer
    for i in range(2000):
        src = ipaddress.IPv4Address(0x64400000 + 10 + i)
        b.inject(src, B4, build_segment(1024 + i, 80, i * 7919, 0, SYN, 65535,
                                        syn_options(1460, 7, True, (i, 0))))
    b.sent.clear()
    assert len(b.tcp.conns) == 8  # the half-open table is bounded
    assert b.counters["tcp_syncookies_sent"] == 1992
    u = RecordingUser()
    conn = a.tcp.connect(B4, 80, u)
    w.run(until=lambda: acc and u.established)
    srv = acc[0].conn
    assert b.counters["tcp_syncookies_ok"] == 1
    # timestamps carried the window scale and SACK-permitted through the cookie
    assert srv.snd_wscale == RCV_WSCALE and srv.sack_ok and srv.ts_ok
    assert srv.mss == 1220 - 12  # MSS rounded down to the cookie table
    data = bytes(range(256)) * 1000
    conn.send(data, clock.seconds())
    srv.send(data[::-1], clock.seconds())
    w.run(until=lambda: len(acc[0].data) == len(data) and len(u.data) == len(data))
    assert acc[0].data == data and u.data == data[::-1]
    # the half-open entries time out after the SYN-ACK retries
    w.run(until=lambda: len(b.tcp.conns) == 1, max_time=200)
    assert len(b.tcp.conns) == 1


def test_forged_cookie_ack_is_reset():
    _clock, _a, b, _w = make_pair()
    _, acc = listen_recording(b, 80, max_half_open=1)
    for i in range(3):
        b.inject(A4, B4, build_segment(2000 + i, 80, 1, 0, SYN, 100))
    b.sent.clear()
    b.inject(A4, B4, build_segment(3000, 80, 2, 12345, ACK, 100))
    (rst,) = b.take()
    assert rst.flags == RST and not acc and b.counters["tcp_syncookies_failed"] == 1


def test_sack_option_with_four_blocks_without_timestamps():
    _clock, _st, peer, _user, _ = server()
    s0 = peer.snd_nxt
    for k in range(5):
        (dup,) = peer.tx(ACK, b"z" * 10, seq=s0 + 20 * (k + 1))
    assert len(dup.sack_blocks) == 4
    assert sack_option([(1, 2)])[2] == 5


def test_sack_recovery_fills_every_hole():
    clock, st, peer, user, _ = server()
    conn = user.conn
    mss = conn.mss
    conn.send(b"s" * (10 * mss), clock.seconds())
    assert len(st.take()) == 10
    base = peer.rcv_nxt

    def sack(*segs):
        return sack_option([((base + a * mss) & M, (base + b * mss) & M) for a, b in segs])

    # segments 0 and 3 lost: SACKs for 1-2 then 4.. (RFC 2018 blocks)
    assert peer.tx(ACK, opts=sack((1, 2))) == []
    assert peer.tx(ACK, opts=sack((1, 3))) == []
    (rtx,) = peer.tx(ACK, opts=sack((4, 5), (1, 3)))  # third duplicate: fast retransmit
    assert rtx.seq == base and st.counters["tcp_fast_retransmits"] == 1
    (hole,) = peer.tx(ACK, opts=sack((4, 6), (1, 3)))
    assert hole.seq == (base + 3 * mss) & M  # the second hole, before any partial ACK
    assert peer.tx(ACK, opts=sack((4, 7), (1, 3))) == []  # nothing left to fill
    # a D-SACK-only ACK (duplicate below SND.UNA) is not a duplicate ACK
    before = st.counters["tcp_dupacks"]
    peer.tx(ACK, opts=sack_option([((base - 10) & M, base & M)]))
    assert st.counters["tcp_dupacks"] == before
    peer.tx(ACK, ack=(base + 10 * mss) & M)
    assert conn.sacked is None and not conn.cc.in_recovery


def test_icmp_errors_pmtu_and_hard_errors():
    clock, st, peer, user, _ = server()
    conn = user.conn
    mss0 = conn.mss
    conn.send(b"p" * 3000, clock.seconds())
    first = st.take()[0]
    quote = build_segment(80, peer.port, first.seq, first.ack, ACK, 0)[:8]
    # a quote outside the flight is ignored
    bad = build_segment(80, peer.port, (first.seq + 99999) & M, 0, ACK, 0)[:8]
    st.tcp.icmp_error(B4, A4, bad, "frag_needed", 600, clock.seconds())
    assert conn.mss == mss0 and st.counters["tcp_icmp_ignored"] == 1
    st.tcp.icmp_error(B4, A4, quote, "frag_needed", 600, clock.seconds())
    assert conn.mss == 600 - 40
    resent = st.take()
    assert resent[0].seq == first.seq and len(resent[0].payload) == 560
    # soft error on an established connection
    st.tcp.icmp_error(B4, A4, quote, "host_unreachable", None, clock.seconds())
    assert conn.state_name == "ESTABLISHED"
    # hard error while connecting
    u = RecordingUser()
    c = st.tcp.connect(A4, 9, u)
    (syn,) = st.take()
    st.tcp.icmp_error(B4, A4, build_segment(c.lport, 9, syn.seq, 0, SYN, 0)[:8],
                      "port_unreachable", None, clock.seconds())
    assert type(u.closed[0]).__name__ == "ConnectionRefusedError"


def test_new_syn_reopens_time_wait():
    clock, st, peer, user, _ = server()
    conn = user.conn
    conn.close(clock.seconds())
    (fin,) = st.take()
    assert fin.flags & FIN and conn.state_name == "FIN-WAIT-1"
    peer.rcv_nxt = (fin.seq + 1) & M
    peer.tx(ACK | FIN)  # ACKs our FIN and closes
    peer.snd_nxt += 1
    assert conn.state_name == "TIME-WAIT"
    # an old duplicate SYN (not above RCV.NXT) gets an ACK, not a new connection
    (ack,) = peer.tx(SYN, seq=peer.snd_nxt - 100, ack=0)
    assert ack.flags == ACK and conn.state_name == "TIME-WAIT"
    # a new SYN above RCV.NXT ends TIME-WAIT and starts a new connection (RFC 6191)
    (synack,) = peer.tx(SYN, seq=peer.snd_nxt + 100000, ack=0,
                        opts=syn_options(1200, None, True, None))
    assert synack.flags == SYN | ACK and synack.ack == (peer.snd_nxt + 100001) & M
    assert conn.state_name == "CLOSED" and len(st.tcp.conns) == 1
