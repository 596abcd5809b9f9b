"""Bounded fragment reassembly (ip.Reassembler) through the Stack."""

from __future__ import annotations

import random
import struct
from collections import Counter

import pytest
from twisted.internet.task import Clock

from nbgateway.netstack import wire
from nbgateway.netstack.ip import Reassembler
from nbgateway.netstack.stack import Stack
from nbgateway.netstack.testing import (
    PacketRecorder,
    StubTCP,
    build_ipv4,
    build_ipv6,
    build_ipv6_fragments,
    build_tcp,
    build_tcp_segment,
    build_udp,
    fragment_ipv4,
    packed,
)
from nbgateway.netstack.udp import listen_udp

ME4, PEER4 = "100.64.0.1", "100.64.0.2"
ME6, PEER6 = "fd00::1", "fd00::2"
KEY = b"\x02" * 32


class Collect:
    def __init__(self):
        self.got = []
        self.transport = None

    def makeConnection(self, t):
        self.transport = t

    def doStop(self):
        pass

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))


def make(**kw):
    clock = Clock()
    stack = Stack(PacketRecorder(), clock, [ME4, ME6], tcp_factory=StubTCP, **kw)
    proto = Collect()
    listen_udp(stack, 9000, proto)
    return stack, clock, proto


BIG = bytes(random.Random(1).getrandbits(8) for _ in range(3000))


@pytest.mark.parametrize("order", ["in_order", "reversed", "shuffled"])
def test_ipv4_reassembly_orders(order):
    stack, _clock, proto = make()
    frags = fragment_ipv4(build_udp(PEER4, ME4, 5000, 9000, BIG, ident=77), 1000)
    assert len(frags) == 4
    if order == "reversed":
        frags.reverse()
    elif order == "shuffled":
        random.Random(3).shuffle(frags)
    for f in frags:
        stack.packetReceived(f, KEY)
    assert proto.got == [(BIG, (PEER4, 5000))]
    assert len(stack.fragments) == 0 and stack.fragments.bytes_held == 0
    assert stack.counters["frag_reassembled"] == 1


def test_ipv4_tcp_reassembly_reaches_tcp():
    stack, _clock, _proto = make()
    frags = fragment_ipv4(build_tcp(PEER4, ME4, 1, 80, payload=b"x" * 100, ident=5), 64)
    for f in frags:
        stack.packetReceived(f, KEY)
    assert stack.tcp.segments[0][2] == build_tcp_segment(PEER4, ME4, 1, 80, payload=b"x" * 100)


def test_ipv6_reassembly():
    stack, _clock, proto = make()
    upper = bytes(wire.emit_udp(packed(PEER6), packed(ME6), 5000, 9000, BIG))
    frags = build_ipv6_fragments(PEER6, ME6, wire.PROTO_UDP, upper, 1000, ident=0xBEEF)
    for f in reversed(frags):
        stack.packetReceived(f, KEY)
    assert proto.got == [(BIG, (PEER6, 5000))]
    assert len(stack.fragments) == 0


def test_duplicate_fragment_ignored_overlap_discards():
    stack, _clock, proto = make()
    frags = fragment_ipv4(build_udp(PEER4, ME4, 5000, 9000, BIG, ident=1), 1000)
    stack.packetReceived(frags[0], KEY)
    stack.packetReceived(frags[0], KEY)
    assert stack.counters["frag_duplicate"] == 1
    for f in frags[1:]:
        stack.packetReceived(f, KEY)
    assert len(proto.got) == 1
    # overlap: a fragment at offset 8 that overlaps the first one
    frags = fragment_ipv4(build_udp(PEER4, ME4, 5000, 9000, BIG, ident=2), 1000)
    stack.packetReceived(frags[0], KEY)
    evil = build_ipv4(PEER4, ME4, 17, b"E" * 16, ident=2, flags_frag=wire.IP4_MF | 1)
    stack.packetReceived(evil, KEY)
    assert stack.counters["drop_frag_overlap"] == 1
    assert len(stack.fragments) == 0 and stack.fragments.bytes_held == 0
    for f in frags[1:]:
        stack.packetReceived(f, KEY)
    assert len(proto.got) == 1  # the attacked datagram never completes


def test_timeout_expires_and_timer_is_armed():
    stack, clock, proto = make(reassembly_timeout=30.0)
    frags = fragment_ipv4(build_udp(PEER4, ME4, 5000, 9000, BIG, ident=3), 1000)
    stack.packetReceived(frags[0], KEY)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [30.0]
    clock.advance(29.9)
    assert len(stack.fragments) == 1
    clock.advance(0.1)
    assert len(stack.fragments) == 0 and stack.fragments.bytes_held == 0
    assert stack.counters["frag_timeout"] == 1 and clock.getDelayedCalls() == []
    for f in frags[1:]:
        stack.packetReceived(f, KEY)
    assert proto.got == []


def test_datagram_count_bound():
    stack, _clock, _proto = make(max_reassembly_datagrams=4)
    for ident in range(10):
        stack.packetReceived(
            build_ipv4(PEER4, ME4, 17, b"a" * 8, ident=ident, flags_frag=wire.IP4_MF), KEY,
        )
    assert len(stack.fragments) == 4
    assert stack.counters["drop_frag_table_full"] == 6


def test_byte_bound():
    stack, _clock, _proto = make(max_reassembly_bytes=4000)
    for ident in range(10):
        stack.packetReceived(
            build_ipv4(PEER4, ME4, 17, b"a" * 1000, ident=ident, flags_frag=wire.IP4_MF), KEY,
        )
    assert stack.fragments.bytes_held <= 4000
    assert stack.counters["drop_frag_memory"] == 6
    assert len(stack.fragments) == 4


def test_validation_rules():
    c: Counter[str] = Counter()
    r = Reassembler(c, max_fragments=3)
    assert r.add("k", 0, True, b"x" * 7, 0.0) is None  # not a multiple of 8
    assert c["drop_frag_bad_length"] == 1
    assert r.add("big", 65528, False, b"x" * 16, 0.0) is None
    assert c["drop_frag_too_big"] == 1
    r.add("k", 16, False, b"x" * 8, 0.0)  # last: total 24
    assert r.add("k", 24, True, b"x" * 8, 0.0) is None  # beyond the end
    assert c["drop_frag_inconsistent"] == 1 and len(r) == 0
    r.add("m", 0, True, b"x" * 8, 0.0)
    r.add("m", 8, True, b"x" * 8, 0.0)
    r.add("m", 16, True, b"x" * 8, 0.0)
    r.add("m", 24, True, b"x" * 8, 0.0)
    assert c["drop_frag_too_many"] == 1 and len(r) == 0 and r.bytes_held == 0
    r.add("n", 0, True, b"a" * 8, 0.0, 17)
    assert r.add("n", 8, False, b"b" * 3, 0.0, 99) == (17, b"a" * 8 + b"bbb")


def test_ipv6_nested_fragment_dropped():
    stack, _clock, _proto = make()
    inner = struct.pack("!BBHI", 17, 0, 8 | 1, 9) + b"z" * 8
    for f in build_ipv6_fragments(PEER6, ME6, wire.PROTO_FRAGMENT, inner, 8, ident=4):
        stack.packetReceived(f, KEY)
    assert stack.counters["drop_ip6_nested_fragment"] == 1


def test_atomic_ipv6_fragment_processed_in_place():
    stack, _clock, proto = make()
    udp = bytes(wire.emit_udp(packed(PEER6), packed(ME6), 1, 9000, b"atomic"))
    stack.packetReceived(
        build_ipv6(PEER6, ME6, 44, struct.pack("!BBHI", 17, 0, 0, 5) + udp), KEY,
    )
    assert proto.got == [(b"atomic", (PEER6, 1))] and len(stack.fragments) == 0


@pytest.mark.parametrize("v6", [False, True])
def test_largest_datagram_reassembles(v6):
    stack, _clock, proto = make(max_reassembly_bytes=70000)
    data = b"m" * (65535 - 8)
    if v6:
        upper = bytes(wire.emit_udp(packed(PEER6), packed(ME6), 5000, 9000, data))
        frags = build_ipv6_fragments(PEER6, ME6, wire.PROTO_UDP, upper, 1232, ident=9)
    else:
        seg = bytes(wire.emit_udp(packed(PEER4), packed(ME4), 5000, 9000, data))
        frags = [
            build_ipv4(PEER4, ME4, 17, seg[off : off + 1256], ident=9,
                       flags_frag=(off >> 3) | (wire.IP4_MF if off + 1256 < len(seg) else 0))
            for off in range(0, len(seg), 1256)
        ]
    assert len(frags) <= 64
    for f in frags:
        stack.packetReceived(f, KEY)
    assert proto.got == [(data, (PEER6 if v6 else PEER4, 5000))]
    assert stack.counters["error_internal"] == 0
    # one byte more than a datagram can hold is refused
    stack.packetReceived(
        build_ipv4(PEER4, ME4, 17, b"x" * 16, ident=10, flags_frag=0x1FFF), KEY,
    )
    assert stack.counters["drop_frag_too_big"] == 1
