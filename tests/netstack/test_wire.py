"""wire.py: checksums against a reference, parse/emit round trips, validation."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.netstack import checksum, wire
from nbgateway.netstack.testing import build_ipv4, build_ipv6, build_udp, packed

S4, D4 = packed("100.64.0.2"), packed("100.64.0.1")
S6, D6 = packed("fd00::2"), packed("fd00::1")


def ref_checksum(data: bytes) -> int:
    """RFC 1071 reference: big-endian 16-bit words, end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_checksum_matches_reference(data):
    assert checksum.internet_checksum(data) == ref_checksum(data)
    assert checksum.internet_checksum(memoryview(data)) == ref_checksum(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=64))
def test_checksum_pieces_add(a, b):
    if len(a) % 2:
        a += b"\x00"
    assert checksum.fold(checksum.ones_sum(a) + checksum.ones_sum(b)) == ref_checksum(a + b)
    assert checksum.internet_checksum(b, checksum.ones_sum(a)) == ref_checksum(a + b)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=2, max_size=100))
def test_filled_checksum_verifies_to_zero(data):
    data = b"\x00\x00" + data
    ck = checksum.internet_checksum(data)
    assert checksum.internet_checksum(ck.to_bytes(2, "big") + data[2:]) == 0


def test_all_zero_and_negative_zero():
    assert checksum.internet_checksum(b"") == 0xFFFF
    assert checksum.internet_checksum(b"\x00\x00") == 0xFFFF
    assert checksum.internet_checksum(b"\xff\xff") == 0 == ref_checksum(b"\xff\xff")
    assert checksum.internet_checksum(b"\xff\xff\xff\xff") == 0


@pytest.mark.parametrize(("src", "dst"), [("10.0.0.1", "10.0.0.2"), ("fd00::1", "2001:db8::9")])
def test_pseudo_header_sum_matches_reference(src, dst):
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    body = b"abcdefg"
    if s.version == 4:
        ph = s.packed + d.packed + bytes((0, 17)) + (70000 % 65536).to_bytes(2, "big")
        length = 70000 % 65536
    else:
        ph = s.packed + d.packed + (70000).to_bytes(4, "big") + b"\x00\x00\x00\x11"
        length = 70000
    got = checksum.internet_checksum(body, checksum.pseudo_header_sum(s, d, 17, length))
    assert got == ref_checksum(ph + body)


def test_ipv4_roundtrip():
    hdr = wire.emit_ipv4_header(S4, D4, 17, 100, ttl=9, ident=0x1234)
    assert len(hdr) == 20 and checksum.internet_checksum(hdr) == 0
    pkt = hdr + b"x" * 100 + b"pad"
    hl, total, ident, ff, ttl, proto, src, dst = wire.ipv4_parse(pkt)
    assert (hl, total, ident, ff, ttl, proto, src, dst) == (
        20, 120, 0x1234, wire.IP4_DF, 9, 17, S4, D4
    )
    r = wire.IPv4Repr.parse(pkt)
    assert r.payload_len == 100 and not r.more_fragments and r.frag_offset == 0
    assert r.emit() == hdr


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: p[:19], "drop_ip4_truncated"),
        (lambda p: b"\x65" + p[1:], "drop_ip4_bad_header"),
        (lambda p: b"\x44" + p[1:], "drop_ip4_bad_header"),
        (lambda p: p[:30], "drop_ip4_truncated"),
        (lambda p: p[:11] + bytes((p[11] ^ 1,)) + p[12:], "drop_ip4_bad_checksum"),
    ],
)
def test_ipv4_rejects(mutate, reason):
    pkt = build_ipv4(S4, D4, 17, b"y" * 20)
    with pytest.raises(wire.WireError) as e:
        wire.ipv4_parse(mutate(pkt))
    assert e.value.reason == reason


def test_ipv4_options():
    ok = build_ipv4(S4, D4, 17, b"z", options=b"\x01\x01\x94\x04\x00\x00")  # NOP NOP RA
    assert wire.ipv4_parse(ok)[0] == 28
    with pytest.raises(wire.WireError, match="drop_ip4_bad_options"):
        wire.ipv4_parse(build_ipv4(S4, D4, 17, b"z", options=b"\x94\x09\x00\x00"))
    with pytest.raises(wire.WireError, match="drop_ip4_bad_options"):
        wire.ipv4_parse(build_ipv4(S4, D4, 17, b"z", options=b"\x94\x00\x00\x00"))
    with pytest.raises(wire.WireError, match="drop_ip4_source_route"):
        wire.ipv4_parse(build_ipv4(S4, D4, 17, b"z", options=b"\x83\x07\x04" + S4 + b"\x00"))
    # a total length shorter than the options is rejected
    bad = bytearray(ok)
    bad[2:4] = (24).to_bytes(2, "big")
    bad[10:12] = b"\x00\x00"
    bad[10:12] = checksum.internet_checksum(bad[:28]).to_bytes(2, "big")
    with pytest.raises(wire.WireError, match="drop_ip4_truncated"):
        wire.ipv4_parse(bytes(bad))


def test_ipv6_roundtrip_and_truncation():
    pkt = build_ipv6(S6, D6, 17, b"q" * 12, hop_limit=3) + b"trailer"
    end, nh, hlim, src, dst = wire.ipv6_parse(pkt)
    assert (end, nh, hlim, src, dst) == (52, 17, 3, S6, D6)
    r = wire.IPv6Repr.parse(pkt)
    assert r.emit() == pkt[:40]
    with pytest.raises(wire.WireError, match="drop_ip6_truncated"):
        wire.ipv6_parse(pkt[:45])
    with pytest.raises(wire.WireError, match="drop_ip6_bad_header"):
        wire.ipv6_parse(b"\x40" + pkt[1:])


def ext(nh: int, body: bytes) -> bytes:
    """An extension header (options/routing) padded to 8 bytes."""
    body += b"\x00" * (-(len(body) + 2) % 8)
    return bytes((nh, (len(body) + 2) // 8 - 1)) + body


def test_ipv6_walk_options():
    payload = ext(60, b"\x01\x02\x00\x00") + ext(17, b"\x05\x02\x00\x00") + b"U" * 8
    pkt = build_ipv6(S6, D6, 0, payload)
    assert wire.ipv6_walk(pkt, 0, 40, len(pkt)) == (17, 56, None)
    # an unknown option whose action bits are "skip" (00) is skipped
    pkt = build_ipv6(S6, D6, 60, ext(17, b"\x3e\x01\x00"))
    assert wire.ipv6_walk(pkt, 60, 40, len(pkt))[0] == 17
    for action in (0x40, 0x80, 0xC0):
        pkt = build_ipv6(S6, D6, 60, ext(17, bytes((action | 0x1E, 1, 0))))
        with pytest.raises(wire.WireError, match="drop_ip6_unknown_option"):
            wire.ipv6_walk(pkt, 60, 40, len(pkt))


def test_ipv6_walk_rejects():
    hbh_late = build_ipv6(S6, D6, 60, ext(0, b"") + ext(17, b""))
    with pytest.raises(wire.WireError, match="drop_ip6_bad_ext_order"):
        wire.ipv6_walk(hbh_late, 60, 40, len(hbh_late))
    routing = build_ipv6(S6, D6, 43, bytes((17, 0, 0, 1)) + b"\x00" * 4)
    with pytest.raises(wire.WireError, match="drop_ip6_routing_header"):
        wire.ipv6_walk(routing, 43, 40, len(routing))
    routing_done = build_ipv6(S6, D6, 43, bytes((17, 0, 0, 0)) + b"\x00" * 4)
    assert wire.ipv6_walk(routing_done, 43, 40, len(routing_done))[:2] == (17, 48)
    esp = build_ipv6(S6, D6, 50, b"\x00" * 16)
    with pytest.raises(wire.WireError, match="drop_ip6_unsupported_ext"):
        wire.ipv6_walk(esp, 50, 40, len(esp))
    deep = b"".join(ext(60, b"") for _ in range(10)) + ext(17, b"")
    deep_pkt = build_ipv6(S6, D6, 60, deep)
    with pytest.raises(wire.WireError, match="drop_ip6_too_many_ext"):
        wire.ipv6_walk(deep_pkt, 60, 40, len(deep_pkt))
    short = build_ipv6(S6, D6, 60, b"\x11\x05")
    with pytest.raises(wire.WireError, match="drop_ip6_truncated"):
        wire.ipv6_walk(short, 60, 40, len(short))


def test_ipv6_walk_fragment_header():
    frag = struct.pack("!BBHI", 17, 0, (16 << 0) | 1, 0xABCD)
    pkt = build_ipv6(S6, D6, 44, frag + b"F" * 8)
    assert wire.ipv6_walk(pkt, 44, 40, len(pkt)) == (17, 48, (16, True, 0xABCD))
    atomic = struct.pack("!BBHI", 17, 0, 0, 7)
    pkt = build_ipv6(S6, D6, 44, atomic + b"A" * 8)
    assert wire.ipv6_walk(pkt, 44, 40, len(pkt)) == (17, 48, None)


def test_icmp_roundtrip_v4_v6():
    m4 = wire.ICMPRepr(8, 0, b"\x00\x01\x00\x02", b"ping").emit_v4()
    assert wire.ICMPRepr.parse(m4) == wire.ICMPRepr(8, 0, b"\x00\x01\x00\x02", b"ping")
    m6 = wire.ICMPRepr(128, 0, b"\x00\x01\x00\x02", b"ping6").emit_v6(S6, D6)
    assert wire.ICMPRepr.parse(m6, S6, D6).data == b"ping6"
    with pytest.raises(wire.WireError, match="drop_icmp_bad_checksum"):
        wire.ICMPRepr.parse(m6, D6, S4 + S4 + S4 + S4)
    with pytest.raises(wire.WireError, match="drop_icmp_bad_checksum"):
        wire.icmp_parse(m4[:-1] + b"x")
    with pytest.raises(wire.WireError, match="drop_icmp_truncated"):
        wire.icmp_parse(m4[:7])


def test_udp_roundtrip_and_validation():
    for s, d in ((S4, D4), (S6, D6)):
        seg = wire.UDPRepr(5353, 53, b"hello").emit(s, d)
        assert wire.UDPRepr.parse(bytes(seg) + b"junk", s, d) == wire.UDPRepr(5353, 53, b"hello")
        with pytest.raises(wire.WireError, match="drop_udp_bad_checksum"):
            wire.udp_parse(seg[:-1] + b"H", s, d)
        with pytest.raises(wire.WireError, match="drop_udp_bad_length"):
            wire.udp_parse(seg[:-1], s, d)
        with pytest.raises(wire.WireError, match="drop_udp_truncated"):
            wire.udp_parse(seg[:7], s, d)
        zero = bytes(seg[:6]) + b"\x00\x00" + bytes(seg[8:])
        if len(s) == 4:
            assert wire.udp_parse(zero, s, d) == (5353, 53, 13)
        else:
            with pytest.raises(wire.WireError, match="drop_udp_bad_checksum"):
                wire.udp_parse(zero, s, d)


def test_udp_checksum_zero_sent_as_ffff():
    # find a payload whose computed checksum is 0 -> must be sent as 0xFFFF
    for i in range(70000):
        seg = wire.emit_udp(S4, D4, 1, 2, i.to_bytes(3, "big"))
        if seg[6:8] == b"\xff\xff":
            assert wire.udp_parse(seg, S4, D4) == (1, 2, 11)
            break
    else:  # pragma: no cover
        pytest.fail("no zero-checksum payload found")


def test_builders_are_valid():
    pkt = build_udp("100.64.0.2", "100.64.0.1", 1000, 53, b"dns")
    hl, total, *_rest = wire.ipv4_parse(pkt)
    assert wire.udp_parse(pkt[hl:total], S4, D4) == (1000, 53, 11)
