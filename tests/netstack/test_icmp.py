"""ICMP: errors delivered to TCP/UDP, ping client, ignored message types."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from nbgateway.netstack import wire
from nbgateway.netstack.icmp import TokenBucket
from nbgateway.netstack.stack import Stack
from nbgateway.netstack.testing import (
    PacketRecorder,
    StubTCP,
    advance,
    build_ipv4,
    build_ipv6,
    build_tcp,
    make_stack_pair,
    packed,
)

ME4, PEER4 = "100.64.0.1", "100.64.0.2"
ME6, PEER6 = "fd00::1", "fd00::2"
KEY = b"\x03" * 32


def make():
    clock = Clock()
    rec = PacketRecorder()
    return Stack(rec, clock, [ME4, ME6], tcp_factory=StubTCP), rec, clock


def test_icmpv4_errors_reach_tcp():
    stack, _rec, _clock = make()
    # the packet we "sent": our TCP segment to the peer
    original = build_tcp(ME4, PEER4, 43210, 443)
    for code, kind, rest, mtu in [
        (3, "port_unreachable", b"\x00" * 4, None),
        (1, "host_unreachable", b"\x00" * 4, None),
        (4, "frag_needed", b"\x00\x00\x02\x40", 576),
    ]:
        err = wire.emit_icmpv4(3, code, rest, original[:28])
        stack.packetReceived(build_ipv4(PEER4, ME4, wire.PROTO_ICMP, err), KEY)
        local, remote, quoted, got_kind, got_mtu = stack.tcp.icmp_errors[-1]
        assert (local, remote) == (ipaddress.ip_address(ME4), ipaddress.ip_address(PEER4))
        assert quoted == struct.pack("!HH", 43210, 443)
        assert (got_kind, got_mtu) == (kind, mtu)
    err = wire.emit_icmpv4(11, 0, b"\x00" * 4, original[:28])
    stack.packetReceived(build_ipv4(PEER4, ME4, wire.PROTO_ICMP, err), KEY)
    assert stack.tcp.icmp_errors[-1][3] == "time_exceeded"
    assert stack.counters["icmp_error_rx"] == 4


def test_icmpv6_errors_reach_tcp():
    stack, _rec, _clock = make()
    original = build_tcp(ME6, PEER6, 43210, 443)
    s, d = packed(PEER6), packed(ME6)
    err = wire.emit_icmpv6(s, d, 1, 4, b"\x00" * 4, original[:48])
    stack.packetReceived(build_ipv6(PEER6, ME6, wire.PROTO_ICMPV6, err), KEY)
    too_big = wire.emit_icmpv6(s, d, 2, 0, (1280).to_bytes(4, "big"), original[:48])
    stack.packetReceived(build_ipv6(PEER6, ME6, wire.PROTO_ICMPV6, too_big), KEY)
    kinds = [(e[3], e[4]) for e in stack.tcp.icmp_errors]
    assert kinds == [("port_unreachable", None), ("frag_needed", 1280)]


def test_bogus_icmp_errors_counted():
    stack, _rec, _clock = make()
    # quote too short, quote about someone else's packet, bad checksum
    for body in (b"\x45" + b"\x00" * 10, build_tcp("100.64.0.9", PEER4, 1, 2)[:28]):
        err = wire.emit_icmpv4(3, 3, b"\x00" * 4, body)
        stack.packetReceived(build_ipv4(PEER4, ME4, wire.PROTO_ICMP, err), KEY)
    bad = bytearray(wire.emit_icmpv4(3, 3, b"\x00" * 4, b"\x00" * 28))
    bad[2] ^= 1
    stack.packetReceived(build_ipv4(PEER4, ME4, wire.PROTO_ICMP, bytes(bad)), KEY)
    c = stack.counters
    assert c["drop_icmp_bad_quote"] == 1 and c["drop_icmp_not_ours"] == 1
    assert c["drop_icmp_bad_checksum"] == 1 and stack.tcp.icmp_errors == []


def test_neighbor_discovery_ignored():
    stack, rec, _clock = make()
    s, d = packed(PEER6), packed(ME6)
    ns = wire.emit_icmpv6(s, d, 135, 0, b"\x00" * 4, d)
    stack.packetReceived(build_ipv6(PEER6, ME6, wire.PROTO_ICMPV6, ns, hop_limit=255), KEY)
    assert stack.counters["icmp_ignored"] == 1 and rec.packets == []


@pytest.mark.parametrize("dst", ["100.64.0.2", "fd00::2"])
def test_ping_between_stacks(dst):
    clock = Clock()
    a, b, _link = make_stack_pair(clock, tcp_factory=StubTCP, latency=0.01)
    results = []
    a.ping(dst, b"abc").addCallback(results.append)
    advance(clock, 0.1)
    assert results == [pytest.approx(0.02)]
    assert b.counters["icmp_echo_reply_tx"] == 1
    assert a.icmp.pending_pings == {}


def test_ping_timeout_uses_stack_timer():
    clock = Clock()
    a, _b, link = make_stack_pair(clock, tcp_factory=StubTCP)
    link.up = False
    failures = []
    a.ping("100.64.0.2", timeout=2.0).addErrback(failures.append)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [2.0]
    clock.advance(2.0)
    assert len(failures) == 1 and failures[0].check(defer.TimeoutError)
    assert a.icmp.pending_pings == {} and clock.getDelayedCalls() == []


def test_ping_errors():
    stack = Stack(PacketRecorder(), Clock(), [ME4], tcp_factory=StubTCP)
    failures = []
    stack.ping("fd00::2").addErrback(failures.append)
    stack.sender.accept = False
    stack.ping(PEER4).addErrback(failures.append)
    assert [f.check(OSError) for f in failures] == [OSError, OSError]
    assert stack.icmp.pending_pings == {}


def test_unexpected_echo_reply_counted():
    stack, _rec, _clock = make()
    reply = wire.emit_icmpv4(0, 0, b"\x00\x01\x00\x01", b"")
    stack.packetReceived(build_ipv4(PEER4, ME4, wire.PROTO_ICMP, reply), KEY)
    assert stack.counters["icmp_echo_reply_unexpected"] == 1


def test_token_bucket():
    tb = TokenBucket(rate=2.0, burst=3)
    assert [tb.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert tb.allow(0.5) and not tb.allow(0.5)
    assert [tb.allow(100.0) for _ in range(4)] == [True, True, True, False]
