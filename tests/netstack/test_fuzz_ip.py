"""Hypothesis fuzzing of Stack.packetReceived: random bytes, mutated valid
packets (truncated, bit-flipped, bogus options and extension headers, bad
checksums) and fragment storms.  Properties: nothing escapes
(``error_internal`` stays 0), every emitted packet is a valid IP packet
within the MTU, and the fragment table stays inside its bounds."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from nbgateway.netstack import wire
from nbgateway.netstack.checksum import fold, ones_sum
from nbgateway.netstack.stack import Stack
from nbgateway.netstack.testing import (
    PacketRecorder,
    StubTCP,
    build_icmp_echo,
    build_ipv4,
    build_ipv6,
    build_tcp,
    build_udp,
)
from nbgateway.netstack.udp import listen_udp

ME4, ME6 = "100.64.0.1", "fd00::1"
PEERS4 = ["100.64.0.2", "100.64.0.3", "10.1.2.3", "0.0.0.0", "255.255.255.255", ME4]
PEERS6 = ["fd00::2", "fe80::1", "ff02::1", "::", ME6]
MAX_DGRAMS, MAX_BYTES = 8, 16 * 1024
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


class Echo(DatagramProtocol):
    def datagramReceived(self, data, addr):
        if addr[1]:
            self.transport.write(data, addr)


def make_stack():
    clock = Clock()
    stack = Stack(PacketRecorder(), clock, [ME4, ME6], tcp_factory=StubTCP,
                  max_reassembly_datagrams=MAX_DGRAMS, max_reassembly_bytes=MAX_BYTES)
    listen_udp(stack, 53, Echo())
    return stack, clock


def check_invariants(stack: Stack) -> None:
    assert stack.counters["error_internal"] == 0
    frag = stack.fragments
    assert len(frag) <= MAX_DGRAMS
    assert 0 <= frag.bytes_held <= MAX_BYTES
    assert frag.bytes_held == sum(p.size for p in frag.table.values())
    assert len(stack._cache) <= stack._cache.limit
    assert len(stack._peer_keys) <= 4096 and len(stack._addr_sums) <= 4096
    for pkt in stack.sender.packets:
        assert len(pkt) <= stack.mtu
        if pkt[0] >> 4 == 4:
            _hl, total, *_ = wire.ipv4_parse(pkt)
            assert total == len(pkt)
        else:
            end, *_ = wire.ipv6_parse(pkt)
            assert end == len(pkt)


def refix_ipv4_checksum(pkt: bytearray) -> None:
    """Recompute the IPv4 header checksum so mutations get past it."""
    if len(pkt) >= 20 and pkt[0] >> 4 == 4:
        hl = max(20, (pkt[0] & 15) * 4)
        if len(pkt) >= hl:
            pkt[10:12] = b"\x00\x00"
            pkt[10:12] = fold(ones_sum(pkt[:hl])).to_bytes(2, "big")


payloads = st.binary(max_size=64)
v4_opts = st.binary(max_size=40)
v6_ext = st.lists(
    st.tuples(st.sampled_from([0, 43, 44, 60, 50, 51, 59, 6, 17, 58]), st.binary(max_size=22)),
    max_size=4,
)


@st.composite
def valid_packets(draw):
    v6 = draw(st.booleans())
    src = draw(st.sampled_from(PEERS6 if v6 else PEERS4))
    dst = draw(st.sampled_from([ME6, "fd00::9"] if v6 else [ME4, "100.64.0.9"]))
    kind = draw(st.sampled_from(["udp", "tcp", "echo", "raw"]))
    data = draw(payloads)
    kw = {} if v6 else {"options": draw(v4_opts) if draw(st.booleans()) else b""}
    if kind == "udp":
        return build_udp(src, dst, draw(st.integers(0, 65535)),
                         draw(st.sampled_from([53, 54])), data, **kw)
    if kind == "tcp":
        return build_tcp(src, dst, 1, draw(st.integers(0, 65535)),
                         flags=draw(st.integers(0, 255)), payload=data, **kw)
    if kind == "echo":
        return build_icmp_echo(src, dst, 1, 2, data, **kw)
    if v6:
        chain = draw(v6_ext)
        body = b""
        first = chain[0][0] if chain else draw(st.integers(0, 255))
        for i, (_nh, content) in enumerate(chain):
            nxt = chain[i + 1][0] if i + 1 < len(chain) else draw(st.integers(0, 255))
            ext = bytes((nxt, len(content) // 8)) + content
            body += ext
        return build_ipv6(src, dst, first, body + data)
    return build_ipv4(src, dst, draw(st.integers(0, 255)), data,
                      ident=draw(st.integers(0, 65535)), flags_frag=draw(st.integers(0, 65535)),
                      **kw)


@st.composite
def mutated(draw):
    pkt = bytearray(draw(valid_packets()))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "set"]))
        if op == "flip" and pkt:
            i = draw(st.integers(0, len(pkt) - 1))
            pkt[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del pkt[draw(st.integers(0, len(pkt))):]
        elif op == "extend":
            pkt += draw(st.binary(max_size=16))
        elif op == "set" and len(pkt) >= 8:
            i = draw(st.integers(0, min(len(pkt), 60) - 1))
            pkt[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        refix_ipv4_checksum(pkt)
    return bytes(pkt)


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_random_bytes(packets):
    stack, _clock = make_stack()
    for p in packets:
        stack.packetReceived(p, b"k" * 32)
        stack.packetReceived(b"\x45" + p, b"k" * 32)
        stack.packetReceived(b"\x60" + p, b"k" * 32)
    check_invariants(stack)


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=12))
def test_mutated_packets(packets):
    stack, _clock = make_stack()
    for p in packets:
        stack.packetReceived(p, b"k" * 32)
    check_invariants(stack)


@st.composite
def fragment(draw):
    v6 = draw(st.booleans())
    ident = draw(st.integers(0, 12))
    offset = draw(st.one_of(
        st.integers(0, 16).map(lambda n: n * 8),  # dense: overlaps and duplicates
        st.integers(0, 8200).map(lambda n: n * 8),  # sparse, up to past 64 KiB
        st.integers(0, 64),  # unaligned
    ))
    more = draw(st.booleans())
    data = draw(st.one_of(
        st.integers(0, 150).map(lambda n: b"\x00" * (n * 8)),
        st.binary(max_size=1200),
    ))
    if v6:
        fh = struct.pack("!BBHI", draw(st.sampled_from([17, 6, 44, 60])), 0,
                         (offset & 0xFFF8) | int(more), ident)
        return build_ipv6("fd00::2", ME6, 44, fh + data)
    field = ((offset >> 3) & 0x1FFF) | (wire.IP4_MF if more else 0)
    return build_ipv4("100.64.0.2", ME4, draw(st.sampled_from([17, 6, 1])), data,
                      ident=ident, flags_frag=field)


@FUZZ
@given(st.lists(st.tuples(fragment(), st.sampled_from([0.0, 0.0, 0.0, 0.5, 20.0])), max_size=40))
def test_fragment_storm_stays_bounded(frags):
    stack, clock = make_stack()
    for pkt, dt in frags:
        stack.packetReceived(pkt, b"k" * 32)
        check_invariants(stack)
        clock.advance(dt)
    clock.advance(31.0)
    assert len(stack.fragments) == 0 and stack.fragments.bytes_held == 0
    check_invariants(stack)
