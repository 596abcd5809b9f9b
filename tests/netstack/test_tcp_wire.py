"""TCP header/option parsing and emission, buffers, cookies, RTO estimator."""

from __future__ import annotations

import ipaddress
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.netstack.buffers import Assembler, SendBuffer
from nbgateway.netstack.congestion import RTO_MAX, RTO_MIN, NewReno, RTOEstimator
from nbgateway.netstack.syncookies import (
    MSS_TABLE,
    SequenceSecrets,
    decode_ts_options,
    encode_ts_options,
)
from nbgateway.netstack.tcp_wire import (
    ACK,
    FIN,
    SYN,
    build_segment,
    parse_segment,
    sack_option,
    syn_options,
    ts_option,
)

L = ipaddress.IPv4Address("100.64.0.1")
R = ipaddress.IPv4Address("100.64.0.2")


def test_roundtrip_syn_options():
    opts = syn_options(1240, 7, True, (123, 456))
    assert len(opts) % 4 == 0 and len(opts) <= 40
    seg = parse_segment(build_segment(1000, 80, 0xFFFFFFFF, 5, SYN | ACK, 65535, opts, b"hi"))
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.wnd) == (1000, 80, 0xFFFFFFFF, 5, 65535)
    assert seg.flags == SYN | ACK
    assert (seg.mss, seg.wscale, seg.sack_perm, seg.ts_val, seg.ts_ecr) == (1240, 7, True, 123, 456)
    assert bytes(seg.payload) == b"hi"
    assert seg.seg_len == 3


def test_options_only_on_syn_and_ts_fast_path():
    opts = ts_option(7, 8) + sack_option([(10, 20)])
    seg = parse_segment(build_segment(1, 2, 3, 4, ACK, 5, opts))
    assert (seg.ts_val, seg.ts_ecr, seg.sack_blocks) == (7, 8, ((10, 20),))
    seg = parse_segment(build_segment(1, 2, 3, 4, ACK | FIN, 5, ts_option(9, 10), b"x"))
    assert (seg.ts_val, seg.ts_ecr) == (9, 10)
    # MSS on a non-SYN is ignored (RFC 9293 3.7.1)
    seg = parse_segment(build_segment(1, 2, 3, 4, ACK, 5, syn_options(1000, 3, True, None)))
    assert seg.mss is None and seg.wscale is None and not seg.sack_perm


def test_wscale_clamped_to_14():
    opts = bytes((2, 4, 5, 0, 1, 3, 3, 30))
    seg = parse_segment(build_segment(1, 2, 3, 4, SYN, 5, opts))
    assert seg.wscale == 14


def test_malformed_headers_rejected():
    good = build_segment(1, 2, 3, 4, ACK, 5)
    assert parse_segment(good[:19]) is None
    bad = bytearray(good)
    bad[12] = 4 << 4  # data offset below 5 words
    assert parse_segment(bad) is None
    bad[12] = 15 << 4  # beyond the segment
    assert parse_segment(bad) is None
    # option running past the header, zero-length option
    assert parse_segment(build_segment(1, 2, 3, 4, SYN, 5, bytes((2, 9, 0, 0)))) is None
    assert parse_segment(build_segment(1, 2, 3, 4, SYN, 5, bytes((8, 0, 0, 0)))) is None
    assert parse_segment(build_segment(0, 2, 3, 4, SYN, 5)) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_parse_never_raises(data):
    seg = parse_segment(data)
    if seg is not None:
        assert len(seg.payload) <= len(data) - 20


def test_send_buffer_consume_and_compact():
    buf = SendBuffer(100)
    assert len(buf) == 0 and buf.end == 100
    buf.append(b"a" * 70000)
    buf.append(b"b" * 70000)
    assert buf.consume_to(100 + 69999) == 69999
    assert bytes(buf.view(100 + 69999, 3)) == b"abb"
    assert buf.consume_to(100 + 70001) == 2
    assert bytes(buf.view(buf.start, 2)) == b"bb"
    assert buf.consume_to(10**9) == 69999 and len(buf) == 0
    assert buf._buf is None  # storage released when empty


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 60)), max_size=40))
def test_assembler_matches_model(pieces):
    source = bytes(range(256)) * 2
    asm = Assembler(max_blocks=8)
    have: set[int] = set()
    for start, n in pieces:
        start += 1  # position 0 is the hole
        chunk = source[start : start + n]
        before = asm.sack_blocks(100)
        if asm.add(1000 + start, chunk):
            have.update(range(start, start + len(chunk)))
        else:
            assert len(before) == 8
        blocks = sorted(asm.sack_blocks(100))
        covered = set()
        for left, right in blocks:
            covered.update(range(left - 1000, right - 1000))
        assert covered == have
        assert asm.bytes == len(have)
        assert len(blocks) <= 8
        # blocks are disjoint and not adjacent
        for (_l1, r1), (l2, _r2) in itertools.pairwise(blocks):
            assert r1 < l2
    if 1 in have:
        got = asm.pop_at(1001)
        run = 1
        while run in have:
            run += 1
        assert got == source[1:run]


def test_assembler_sack_order_most_recent_first():
    asm = Assembler()
    asm.add(10, b"x" * 5)
    asm.add(30, b"y" * 5)
    asm.add(50, b"z" * 5)
    asm.add(35, b"y")
    assert asm.sack_blocks(3) == [(30, 36), (50, 55), (10, 15)]


def test_isn_differs_per_tuple_and_advances():
    s = SequenceSecrets(b"s" * 32)
    a = s.isn(L, 1, R, 2, 10.0)
    assert a != s.isn(L, 1, R, 3, 10.0)
    assert (s.isn(L, 1, R, 2, 11.0) - a) & 0xFFFFFFFF == 250_000
    assert SequenceSecrets(b"t" * 32).isn(L, 1, R, 2, 10.0) != a


def test_syn_cookie_roundtrip_and_expiry():
    s = SequenceSecrets(b"s" * 32)
    cookie, mss = s.make_cookie(L, 80, R, 4000, 12345, 1240, 1000.0)
    assert mss == 1220 and mss in MSS_TABLE
    assert s.check_cookie(L, 80, R, 4000, 12345, cookie, 1000.0) == 1220
    assert s.check_cookie(L, 80, R, 4000, 12345, cookie, 1000.0 + 64) == 1220
    assert s.check_cookie(L, 80, R, 4000, 12345, cookie, 1000.0 + 200) is None
    assert s.check_cookie(L, 80, R, 4000, 12346, cookie, 1000.0) is None
    assert s.check_cookie(L, 80, R, 4001, 12345, cookie, 1000.0) is None
    assert s.check_cookie(L, 80, R, 4000, 12345, cookie ^ (1 << 24), 1000.0) is None


def test_ts_option_bits():
    v = encode_ts_options(1_000_000, 7, True)
    assert v <= 1_000_000 and decode_ts_options(v) == (7, True)
    assert decode_ts_options(encode_ts_options(5000, None, False)) == (None, False)


def test_rto_estimator_rfc6298():
    r = RTOEstimator()
    assert r.current() == 1.0
    r.on_timeout()
    assert r.current() == 2.0
    r.sample(0.5)  # first sample: SRTT=R, RTTVAR=R/2, RTO=SRTT+4*RTTVAR
    assert r.srtt == 0.5 and r.rttvar == 0.25 and r.rto == 1.5 and r.backoff == 0
    r.sample(0.5)
    assert r.rttvar == 0.1875 and r.srtt == 0.5
    for _ in range(50):
        r.sample(0.001)
    assert r.rto == RTO_MIN
    for _ in range(20):
        r.on_timeout()
    assert r.current() == RTO_MAX


def test_newreno_fast_recovery_cycle():
    cc = NewReno(1000, iss=0)
    cc.cwnd = 20000
    assert not cc.on_dupack(1, 20001, 20000)
    assert not cc.on_dupack(1, 20001, 20000)
    assert cc.on_dupack(1, 20001, 20000)  # third dupack
    assert cc.in_recovery and cc.ssthresh == 10000 and cc.cwnd == 13000
    cc.on_dupack(1, 20001, 20000)
    assert cc.cwnd == 14000  # inflation
    assert cc.on_ack(5000, 5001, 20000)  # partial ACK: retransmit next hole
    assert cc.in_recovery
    assert not cc.on_ack(15000, 20001, 15000)  # full ACK
    assert not cc.in_recovery and cc.cwnd <= cc.ssthresh
