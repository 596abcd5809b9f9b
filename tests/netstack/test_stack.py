"""Stack: inbound validation and dispatch, outbound send_transport, timers."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from twisted.internet.task import Clock

from nbgateway.netstack import wire
from nbgateway.netstack.checksum import fold, ones_sum, pseudo_sum_packed
from nbgateway.netstack.stack import Stack
from nbgateway.netstack.testing import (
    PacketRecorder,
    StubTCP,
    build_icmp_echo,
    build_ip,
    build_ipv4,
    build_ipv6,
    build_tcp,
    build_tcp_segment,
    build_udp,
    packed,
)

ME4, PEER4 = "100.64.0.1", "100.64.0.2"
ME6, PEER6 = "fd00::1", "fd00::2"
KEY = b"\x01" * 32


def make_stack(**kw) -> tuple[Stack, PacketRecorder, Clock]:
    clock = Clock()
    rec = PacketRecorder()
    return Stack(rec, clock, [ME4, ME6], tcp_factory=StubTCP, **kw), rec, clock


def parse_any(pkt: bytes):
    """(src, dst, protocol, payload) of an emitted packet, validated."""
    if pkt[0] >> 4 == 4:
        hl, total, _i, ff, ttl, proto, src, dst = wire.ipv4_parse(pkt)
        assert ttl == 64 and ff & wire.IP4_DF and total == len(pkt)
        return src, dst, proto, pkt[hl:]
    end, nh, hlim, src, dst = wire.ipv6_parse(pkt)
    assert hlim == 64 and end == len(pkt)
    return src, dst, nh, pkt[40:]


@pytest.mark.parametrize(("me", "peer"), [(ME4, PEER4), (ME6, PEER6)])
def test_echo_reply(me, peer):
    stack, rec, _clock = make_stack()
    stack.packetReceived(build_icmp_echo(peer, me, 0x1234, 7, b"payload!"), KEY)
    [out] = rec.take()
    src, dst, proto, msg = parse_any(out)
    assert (src, dst) == (packed(me), packed(peer))
    if proto == wire.PROTO_ICMP:
        r = wire.ICMPRepr.parse(msg)
        assert r.type == wire.ICMP4_ECHO_REPLY
    else:
        r = wire.ICMPRepr.parse(msg, src, dst)
        assert r.type == wire.ICMP6_ECHO_REPLY
    assert r.rest == struct.pack("!HH", 0x1234, 7) and r.data == b"payload!"
    assert stack.counters["icmp_echo_reply_tx"] == 1


@pytest.mark.parametrize(("me", "peer", "other"), [
    (ME4, PEER4, "100.64.0.77"), (ME6, PEER6, "fd00::77"),
])
def test_not_local_is_dropped_with_host_unreachable(me, peer, other):
    stack, rec, _clock = make_stack()
    stack.packetReceived(build_udp(peer, other, 1000, 53, b"q"), KEY)
    assert stack.counters["drop_not_local"] == 1
    [out] = rec.take()
    src, dst, proto, msg = parse_any(out)
    assert (src, dst) == (packed(me), packed(peer))
    if proto == wire.PROTO_ICMP:
        r = wire.ICMPRepr.parse(msg)
        assert (r.type, r.code) == (3, 1)
    else:
        r = wire.ICMPRepr.parse(msg, src, dst)
        assert (r.type, r.code) == (1, 3)
    assert r.data.startswith(build_udp(peer, other, 1000, 53, b"q")[:28])


def test_not_local_multicast_and_icmp_errors_get_no_reply():
    stack, rec, _clock = make_stack()
    stack.packetReceived(build_udp(PEER4, "224.0.0.251", 5353, 5353, b"m"), KEY)
    stack.packetReceived(build_udp(PEER6, "ff02::fb", 5353, 5353, b"m"), KEY)
    err = wire.emit_icmpv4(3, 3, b"\x00" * 4, b"\x00" * 28)
    stack.packetReceived(build_ipv4(PEER4, "100.64.0.9", wire.PROTO_ICMP, err), KEY)
    assert stack.counters["drop_not_local"] == 3
    assert rec.packets == []
    off = Stack(PacketRecorder(), Clock(), [ME4], tcp_factory=StubTCP,
                icmp_host_unreachable=False)
    off.packetReceived(build_udp(PEER4, "100.64.0.9", 1, 2, b""), KEY)
    assert off.sender.packets == [] and off.counters["drop_not_local"] == 1


@pytest.mark.parametrize("src", ["0.0.0.0", "127.0.0.1", "224.0.0.1", ME4, "::", "::1",
                                 "ff02::1", ME6])
def test_bad_sources_dropped(src):
    stack, rec, _clock = make_stack()
    dst = ME4 if ":" not in src else ME6
    stack.packetReceived(build_icmp_echo(src, dst, 1, 1), KEY)
    assert stack.counters["drop_bad_source"] == 1 and rec.packets == []


@pytest.mark.parametrize(("me", "peer"), [(ME4, PEER4), (ME6, PEER6)])
def test_tcp_dispatch(me, peer):
    stack, rec, clock = make_stack()
    clock.advance(3)
    pkt = build_tcp(peer, me, 40000, 443, seq=5, payload=b"hello")
    stack.packetReceived(pkt, KEY)
    [(src, dst, seg, now)] = stack.tcp.segments
    assert src == ipaddress.ip_address(peer) and dst == ipaddress.ip_address(me)
    assert dst is stack.addresses[0 if ":" not in me else 1]
    assert seg == build_tcp_segment(peer, me, 40000, 443, seq=5, payload=b"hello")
    assert now == 3
    # corrupted TCP checksum (IP header still valid) is dropped
    bad = bytearray(pkt)
    bad[-1] ^= 0xFF
    stack.packetReceived(bytes(bad), KEY)
    assert stack.counters["drop_tcp_bad_checksum"] == 1
    # truncated TCP header
    stack.packetReceived(build_ip(peer, me, 6, b"\x00" * 12), KEY)
    assert stack.counters["drop_tcp_truncated"] == 1
    assert len(stack.tcp.segments) == 1 and rec.packets == []


def test_tcp_over_ipv6_extension_headers():
    stack, _rec, _clock = make_stack()
    seg = build_tcp_segment(PEER6, ME6, 1, 80)
    dstopts = bytes((6, 0, 1, 4, 0, 0, 0, 0))  # Destination Options: PadN(4)
    stack.packetReceived(build_ipv6(PEER6, ME6, 60, dstopts + seg), KEY)
    assert stack.tcp.segments[0][2] == seg


def test_truncated_and_garbage_counted():
    stack, rec, _clock = make_stack()
    for pkt in (b"", b"\x45", b"\x00" * 40, b"\x60" + b"\x00" * 10, b"\x95" * 30):
        stack.packetReceived(pkt, KEY)
    c = stack.counters
    assert c["drop_empty"] == 1 and c["drop_ip4_truncated"] == 1
    assert c["drop_bad_version"] == 2 and c["drop_ip6_truncated"] == 1
    assert rec.packets == [] and c["error_internal"] == 0


def test_memoryview_and_bytearray_input():
    stack, _rec, _clock = make_stack()
    pkt = build_tcp(PEER4, ME4, 1, 80)
    stack.packetReceived(memoryview(bytearray(pkt)), KEY)
    stack.packetReceived(memoryview(pkt).cast("c"), KEY)
    assert len(stack.tcp.segments) == 2


def test_unknown_protocol_gets_protocol_unreachable():
    stack, rec, _clock = make_stack()
    stack.packetReceived(build_ipv4(PEER4, ME4, 132, b"sctp" * 4), KEY)
    stack.packetReceived(build_ipv6(PEER6, ME6, 132, b"sctp" * 4), KEY)
    stack.packetReceived(build_ipv6(PEER6, ME6, 59, b""), KEY)
    assert stack.counters["drop_unknown_protocol"] == 2
    assert stack.counters["drop_no_next_header"] == 1
    v4, v6 = rec.take()
    r4 = wire.ICMPRepr.parse(parse_any(v4)[3])
    assert (r4.type, r4.code) == (3, 2)
    s, d, _p, m = parse_any(v6)
    r6 = wire.ICMPRepr.parse(m, s, d)
    assert (r6.type, r6.code, r6.rest) == (4, 1, b"\x00\x00\x00\x06")


def test_exceptions_never_escape():
    stack, _rec, _clock = make_stack()
    stack.tcp.raise_on_segment = True
    stack.packetReceived(build_tcp(PEER4, ME4, 1, 80), KEY)
    assert stack.counters["error_internal"] == 1


@pytest.mark.parametrize(("me", "peer"), [(ME4, PEER4), (ME6, PEER6)])
def test_send_transport_tcp(me, peer):
    stack, rec, _clock = make_stack()
    seg = bytearray(build_tcp_segment(me, peer, 443, 40000, seq=9, payload=b"data"))
    seg[16:18] = b"\xde\xad"  # garbage: must be overwritten
    assert stack.send_transport(ipaddress.ip_address(me), ipaddress.ip_address(peer), 6, seg)
    [out] = rec.take()
    src, dst, proto, payload = parse_any(out)
    assert (src, dst, proto) == (packed(me), packed(peer), 6)
    assert payload == build_tcp_segment(me, peer, 443, 40000, seq=9, payload=b"data")
    assert fold(ones_sum(payload, pseudo_sum_packed(src, dst, 6, len(payload)))) == 0


def test_send_transport_udp_and_idents():
    stack, rec, _clock = make_stack()
    for _ in range(2):
        seg = bytearray(struct.pack("!HHHH", 53, 1000, 11, 0) + b"ans")
        assert stack.send_transport(packed(ME4), packed(PEER4), 17, seg)
    a, b = rec.take()
    assert wire.UDPRepr.parse(parse_any(a)[3], packed(ME4), packed(PEER4)).payload == b"ans"
    assert struct.unpack_from("!H", a, 4)[0] + 1 == struct.unpack_from("!H", b, 4)[0]


def test_send_transport_mtu_and_refusal():
    stack, rec, _clock = make_stack(mtu=1280)
    assert stack.send_transport(packed(ME4), packed(PEER4), 6, bytearray(1260))
    assert not stack.send_transport(packed(ME4), packed(PEER4), 6, bytearray(1261))
    assert stack.send_transport(packed(ME6), packed(PEER6), 6, bytearray(1240))
    assert not stack.send_transport(packed(ME6), packed(PEER6), 6, bytearray(1241))
    assert stack.counters["drop_tx_too_big"] == 2 and len(rec.take()) == 2
    rec.accept = False
    assert not stack.send_transport(packed(ME4), packed(PEER4), 6, bytearray(20))
    assert stack.counters["tx_refused"] == 1


def test_constructor_validation():
    with pytest.raises(ValueError):
        Stack(PacketRecorder(), Clock(), [], tcp_factory=StubTCP)
    with pytest.raises(ValueError):
        Stack(PacketRecorder(), Clock(), [ME6], mtu=1000, tcp_factory=StubTCP)
    s = Stack(PacketRecorder(), Clock(), [ME4], mtu=1000, tcp_factory=StubTCP)
    assert s.mtu == 1000 and s.addresses == (ipaddress.IPv4Address(ME4),)
    assert s.source_address(ipaddress.ip_address(PEER4)) == ipaddress.IPv4Address(ME4)
    assert s.source_address(ipaddress.ip_address(PEER6)) is None
    assert s.is_local(ipaddress.IPv4Address(ME4))


# ------------------------------------------------------------ the timer


def test_wakeup_rearms_one_delayed_call():
    stack, _rec, clock = make_stack()
    assert clock.getDelayedCalls() == []
    stack.tcp.deadline = 5.0
    stack.wakeup()
    [call] = clock.getDelayedCalls()
    assert call.getTime() == 5.0
    stack.tcp.deadline = 8.0  # later: the armed timer is kept (fires early, re-arms)
    stack.wakeup()
    assert clock.getDelayedCalls() == [call] and call.getTime() == 5.0
    stack.tcp.deadline = 2.0  # earlier: reset
    stack.wakeup()
    assert [c.getTime() for c in clock.getDelayedCalls()] == [2.0]
    clock.advance(2.0)
    assert stack.tcp.fired == [2.0]
    assert clock.getDelayedCalls() == []
    stack.tcp.deadline = 3.0
    stack.wakeup()
    stack.tcp.deadline = None
    stack.wakeup()
    assert clock.getDelayedCalls() == []


def test_early_fire_rearms_for_later_deadline():
    stack, _rec, clock = make_stack()
    stack.tcp.deadline = 1.0
    stack.wakeup()
    stack.tcp.deadline = 4.0
    stack.wakeup()
    clock.advance(1.0)
    assert stack.tcp.fired == [1.0]
    assert [c.getTime() for c in clock.getDelayedCalls()] == [4.0]
    clock.advance(3.0)
    assert stack.tcp.fired == [1.0, 4.0] and clock.getDelayedCalls() == []


def test_close_cancels_timer():
    stack, _rec, clock = make_stack()
    stack.tcp.deadline = 1.0
    stack.wakeup()
    stack.close()
    stack.wakeup()
    assert clock.getDelayedCalls() == []


def test_deadline_errors_are_contained():
    stack, _rec, clock = make_stack()

    def boom(now):
        raise RuntimeError("tcp timer bug")

    stack.tcp.on_deadline = boom
    stack.tcp.deadline = 1.0
    stack.wakeup()
    stack.tcp.deadline = None
    clock.advance(1.0)
    assert stack.counters["error_internal"] == 1


def test_segment_received_rearms_timer():
    stack, _rec, clock = make_stack()
    stack.tcp.deadline = 0.2  # as if the segment started a delayed-ACK timer
    stack.packetReceived(build_tcp(PEER4, ME4, 1, 80), KEY)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [0.2]
    clock.advance(0.2)
    assert stack.tcp.fired == [0.2] and clock.getDelayedCalls() == []


@pytest.mark.parametrize(("me", "peer"), [(ME4, PEER4), (ME6, PEER6)])
def test_large_echo_reply_is_fragmented(me, peer):
    from nbgateway.netstack.testing import build_ipv6_fragments, fragment_ipv4

    stack, rec, _clock = make_stack()
    request = build_icmp_echo(peer, me, 1, 1, b"P" * 3000)
    if ":" in me:
        upper = request[40:]
        frags = build_ipv6_fragments(peer, me, wire.PROTO_ICMPV6, upper, 1200, ident=3)
    else:
        frags = fragment_ipv4(request, 1200)
    for f in frags:
        stack.packetReceived(f, KEY)
    out = rec.take()
    assert len(out) == 3 and all(len(p) <= stack.mtu for p in out)
    assert stack.counters["tx_fragments"] == 3
    # reassemble the reply with a second stack playing the peer
    peer_stack = Stack(PacketRecorder(), Clock(), [peer], tcp_factory=StubTCP)
    got = []
    peer_stack.icmp._echo_reply = lambda src, rest, now: got.append((src, rest))
    for p in out:
        peer_stack.packetReceived(p, KEY)
    assert got == [(packed(me), struct.pack("!HH", 1, 1))]


def test_peer_key_for_source():
    stack, _rec, _clock = make_stack()
    k1, k2 = b"\x11" * 32, b"\x22" * 32
    stack.packetReceived(build_tcp(PEER4, ME4, 1, 80), k1)
    stack.packetReceived(build_tcp(PEER6, ME6, 1, 80), k2)
    stack.packetReceived(build_tcp("100.64.0.3", "100.64.0.99", 1, 80), k2)  # not local
    assert stack.peer_key_for(ipaddress.ip_address(PEER4)) == k1
    assert stack.peer_key_for(packed(PEER6)) == k2
    assert stack.peer_key_for(ipaddress.ip_address("100.64.0.3")) is None
    stack.packetReceived(build_tcp(PEER4, ME4, 1, 80), k2)  # allowed IPs moved
    assert stack.peer_key_for(packed(PEER4)) == k2


def test_close_stops_everything():
    from twisted.internet.protocol import DatagramProtocol

    from nbgateway.netstack.udp import listen_udp

    stack, rec, clock = make_stack()
    closed = []

    class P(DatagramProtocol):
        def stopProtocol(self):
            closed.append(True)

    listen_udp(stack, 53, P())
    failures = []
    stack.ping(PEER4).addErrback(failures.append)
    stack.tcp.close = lambda: closed.append("tcp")
    rec.take()
    stack.close()
    stack.close()  # idempotent
    assert closed == [True, "tcp"] and stack.closed
    assert len(failures) == 1 and failures[0].check(OSError)
    assert stack.udp.sockets == {} and clock.getDelayedCalls() == []
    stack.packetReceived(build_icmp_echo(PEER4, ME4, 1, 1), KEY)
    assert not stack.send_transport(packed(ME4), packed(PEER4), 6, bytearray(20))
    assert stack.counters["drop_closed"] == 2 and rec.packets == []
