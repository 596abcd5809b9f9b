"""The stack's batch entry point (``Stack.packetsReceived``) inlines the
per-packet dispatch and the IPv4 header check for the common packet (IPv4
without options, in ``bytes``): a batch must give exactly what the same
packets fed one by one through ``packetReceived`` give -- the same segments
to TCP, the same drop counters -- for well-formed and malformed packets,
other buffer types, IPv6 and options; an exception on one packet is
counted and the rest of the batch still arrives."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from nbgateway.netstack import wire
from nbgateway.netstack.checksum import internet_checksum
from nbgateway.netstack.stack import Stack
from nbgateway.netstack.testing import PacketRecorder, StubTCP, build_ipv4, build_tcp

ME4, PEER4 = "100.64.0.1", "100.64.0.2"
ME6, PEER6 = "fd00::1", "fd00::2"
KEY = b"\x01" * 32


class RaisingTCP(StubTCP):
    """Raises for segments from source port 666."""

    def segment_received(self, src, dst, segment, now):
        if segment[0] == 666 >> 8 and segment[1] == 666 & 0xFF:
            raise RuntimeError("told to raise")
        super().segment_received(src, dst, segment, now)


def make_stack() -> Stack:
    stack = Stack(PacketRecorder(), Clock(), [ME4, ME6], tcp_factory=RaisingTCP, coalesce=False)
    stack._ident = 7  # (random per stack otherwise)
    return stack


def _with_options(pkt: bytes, options: bytes = b"\x01\x01\x01\x00") -> bytes:
    """The same IPv4 packet with a 4-byte option area (IHL 6; NOP NOP NOP EOL)."""
    hdr = bytearray(pkt[:20])
    hdr[0] = 0x46
    total = len(pkt) + 4
    hdr[2:4] = total.to_bytes(2, "big")
    hdr[10:12] = b"\0\0"
    hdr += options
    hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + pkt[20:]


def _bad(pkt: bytes, i: int, value: int) -> bytes:
    b = bytearray(pkt)
    b[i] = value
    return bytes(b)


def packets() -> list:
    good = build_tcp(PEER4, ME4, 1000, 80, payload=b"hello")
    bad_ck = _bad(good, 11, good[11] ^ 0x01)
    long_total = _bad(good, 3, good[3] + 8)  # total length beyond the packet
    short_total = good[:2] + b"\x00\x10" + good[4:]  # total 16 < 20
    source_route = _with_options(good, b"\x83\x03\x00\x00")  # loose source route: refused
    return [
        good,
        bad_ck,
        long_total,
        short_total,
        _with_options(build_tcp(PEER4, ME4, 1001, 80, payload=b"options")),
        source_route,
        build_tcp(PEER6, ME6, 1002, 80, payload=b"six"),
        bytearray(build_tcp(PEER4, ME4, 1003, 80, payload=b"bytearray")),
        memoryview(build_tcp(PEER4, ME4, 1004, 80, payload=b"view")),
        b"",
        b"\x45",
        b"\x95" * 30,
        build_tcp(PEER4, ME4, 666, 80, payload=b"raises"),
        build_ipv4(PEER4, ME4, 132, b"sctp" * 4),
        build_tcp(PEER4, ME4, 1005, 80, payload=b"after the exception"),
    ]


def test_a_batch_equals_the_packets_one_by_one():
    one, batch = make_stack(), make_stack()
    for pkt in packets():
        one.packetReceived(pkt, KEY)
    batch.packetsReceived(packets(), KEY)
    assert batch.tcp.segments == one.tcp.segments
    assert batch.counters == one.counters
    assert batch.sender.packets == one.sender.packets  # the ICMP protocol unreachable
    c = batch.counters
    assert c["drop_ip4_bad_checksum"] == 1 and c["drop_ip4_truncated"] == 3
    assert c["drop_ip4_source_route"] == 1 and c["error_internal"] == 1
    ports = [int.from_bytes(seg[2][:2], "big") for seg in batch.tcp.segments]
    assert ports == [1000, 1001, 1002, 1003, 1004, 1005]


@pytest.mark.parametrize("flip", range(20))
def test_any_corrupted_header_byte_is_caught_in_a_batch(flip):
    """Every single-bit header corruption the full parser refuses is refused
    by the inlined check too (the same counter)."""
    good = build_tcp(PEER4, ME4, 1000, 80, payload=b"x")
    pkt = _bad(good, flip, good[flip] ^ 0x04)
    one, batch = make_stack(), make_stack()
    one.packetReceived(pkt, KEY)
    batch.packetsReceived([pkt, good], KEY)
    assert batch.counters - one.counters == {"rx_packets": 1}  # (the good one)
    try:
        wire.ipv4_parse(pkt)
    except wire.WireError as e:
        assert batch.counters[e.reason] == 1


def test_a_stack_closed_during_a_batch_drops_the_rest():
    stack = make_stack()
    pkts = [build_tcp(PEER4, ME4, 1000 + i, 80, payload=b"p") for i in range(3)]
    seen = stack.tcp.segment_received

    def close_after_first(src, dst, segment, now):
        seen(src, dst, segment, now)
        stack.close()

    stack.tcp.segment_received = close_after_first
    stack.packetsReceived(pkts, KEY)
    assert len(stack.tcp.segments) == 1 and stack.counters["drop_closed"] == 2


def test_the_inline_ipv4_header_checksum_agrees_with_wire_ipv4_parse():
    """The option-less header check sums the header as three ints; for random
    headers with right and wrong checksums it drops exactly what
    ``wire.ipv4_parse`` rejects as ``drop_ip4_bad_checksum``."""
    import random
    import struct

    rng = random.Random(791)
    stack = make_stack()
    for i in range(3000):
        hdr = bytearray(b"\x45" + rng.randbytes(19))
        struct.pack_into("!H", hdr, 2, 20 + rng.randrange(0, 40))  # total length in range
        hdr[10:12] = b"\0\0"
        if i % 2:
            hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
        if i % 7 == 0:
            hdr[10:12] = rng.randbytes(2)
        pkt = bytes(hdr) + bytes(40)
        try:
            wire.ipv4_parse(memoryview(pkt))
            bad = False
        except wire.WireError as e:
            bad = e.reason == "drop_ip4_bad_checksum"
        before = stack.counters["drop_ip4_bad_checksum"]
        stack.packetReceived(pkt, KEY)
        assert stack.counters["drop_ip4_bad_checksum"] - before == bad, (i, pkt[:20].hex())


def test_the_timer_after_a_batch_is_what_wakeup_arms():
    """The batch's closing wakeup runs inline when the timer is armed at or
    before the first entry of TCP's heap (live or not: every live deadline is
    at or after it); a later timer, no timer, or a reassembly waiting go
    through ``wakeup`` itself, which also drops stale and closed first
    entries.  The timer is never later than the first live deadline."""
    import heapq

    from nbgateway.netstack.tcp_const import CLOSED
    from nbgateway.netstack.tcp_wire import SYN

    from .test_coalesce import CPORT, PORT, Peer

    p = Peer(ME4, PEER4)
    p.handshake()
    stack, conn = p.stack, p.conns[0]
    heap = stack.tcp._heap

    def arm(delay: float | None) -> None:
        if stack._timer is not None:
            stack._timer.cancel()
            stack._timer = stack._timer_at = None
        if delay is not None:
            stack._timer = p.clock.callLater(delay, stack._fire)
            stack._timer_at = p.clock.seconds() + delay

    def batch(before=None) -> None:
        p.clock.advance(1.0)  # what is due fires first (the last batch's delayed ACK)
        p.rec.take()
        if before is not None:
            before()
        stack.packetsReceived([p.segment(b"x")], KEY)
        p.seq += 1

    batch()
    assert stack._timer_at == stack.next_deadline() == conn.heap_at  # armed by the batch
    # armed earlier than needed: kept (it fires early and re-arms)
    batch(lambda: arm(0.0001))
    assert stack._timer_at == p.clock.seconds() + 0.0001 < stack.next_deadline()
    # armed later than the first deadline: moved to it
    batch(lambda: arm(999))
    assert stack._timer_at == stack.next_deadline() < p.clock.seconds() + 1
    # no timer armed: armed
    batch(lambda: arm(None))
    assert stack._timer is not None and stack._timer_at == stack.next_deadline()

    # a stale first entry (earlier than anything live): dropped, not used
    def stale() -> None:
        arm(999)
        heapq.heappush(heap, (p.clock.seconds() + 0.00001, -1, conn))

    batch(stale)
    assert heap[0][2].heap_at == heap[0][0]
    assert stack._timer_at == stack.next_deadline() == conn.heap_at
    # a closed connection's entry first: dropped as well
    other = Peer(ME4, PEER4)  # (a connection object of another stack, closed)
    other.handshake()
    gone = other.conns[0]

    def closed() -> None:
        arm(999)
        gone.state = CLOSED
        gone.heap_at = p.clock.seconds() + 0.00001
        heapq.heappush(heap, (gone.heap_at, -2, gone))

    batch(closed)
    assert heap[0][2] is not gone and stack._timer_at == stack.next_deadline() == conn.heap_at

    # a stale first entry after an early timer: nothing to do (the timer
    # fires first, and the entry goes when it does)
    def stale_after_early() -> None:
        arm(0.00001)
        heapq.heappush(heap, (p.clock.seconds() + 0.00002, -3, conn))

    batch(stale_after_early)
    assert stack._timer_at == p.clock.seconds() + 0.00001 < stack.next_deadline()
    p.clock.advance(0.00001)  # fires early: re-armed at the live deadline
    assert stack._timer_at == stack.next_deadline() == conn.heap_at

    # a reassembly waiting (the timer armed far out): through wakeup
    def fragment() -> None:
        frag = build_tcp(PEER4, ME4, CPORT + 1, PORT, seq=1, flags=SYN)
        first = bytearray(frag[:28])
        first[2:4] = (28).to_bytes(2, "big")
        first[6] = 0x20  # more fragments, offset 0
        first[10:12] = b"\0\0"
        first[10:12] = internet_checksum(bytes(first[:20])).to_bytes(2, "big")
        stack.packetReceived(bytes(first), KEY)
        assert stack.fragments.table
        arm(999)

    batch(fragment)
    assert stack.fragments.table and stack._timer_at == stack.next_deadline()
