"""The data path's IP version checks: the common first byte (0x45, IPv4
without options) is tested first, and every other IPv4 header length, IPv6
and anything else still take the branch the version nibble selects, outbound
(``sendPacket``, ``sendPackets``) and inbound (the cryptokey-routing source
check of ``datagramsReceived``)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from nbgateway.netstack.checksum import internet_checksum
from nbgateway.wireguard.testing import ipv4_packet, ipv6_packet

from .conftest import make_pair


def _ipv4_with_options(src: str, dst: str, payload: bytes, words: int) -> bytes:
    """IPv4 with ``words`` 32-bit words of options (NOPs): first byte 0x45 + words."""
    ihl = 5 + words
    header = bytearray(struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    ) + b"\x01" * (4 * words))
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + payload


def _up(pair) -> None:
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"hello"))
    pair.net.pump()
    pair.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"back"))
    pair.net.pump()
    pair.sink_a.packets.clear()
    pair.sink_b.packets.clear()


@pytest.mark.parametrize("words", [0, 1, 10])
@pytest.mark.parametrize("batch", [False, True])
def test_ipv4_of_every_header_length_is_routed_and_accepted(words, batch):
    pair = make_pair()
    _up(pair)
    pkts = [_ipv4_with_options("10.0.0.1", "10.0.0.2", b"p%d" % i, words) for i in range(3)]
    assert pkts[0][0] == 0x45 + words
    if batch:
        assert pair.a.sendPackets(pkts) == 3
    else:
        assert all(pair.a.sendPacket(p) for p in pkts)
    pair.net.pump()
    assert [p for p, _ in pair.sink_b.packets] == pkts
    assert pair.b.counters["drop_malformed_inner"] == 0


@pytest.mark.parametrize("words", [0, 1])
def test_ipv4_with_a_foreign_source_is_dropped_whatever_its_header_length(words):
    pair = make_pair()
    _up(pair)
    pair.a.sendPacket(_ipv4_with_options("10.9.9.9", "10.0.0.2", b"spoof", words))
    pair.net.pump()
    assert pair.b.counters["drop_disallowed_source"] == 1
    assert pair.sink_b.packets == []


@pytest.mark.parametrize("batch", [False, True])
def test_ipv6_and_other_versions_take_their_branches(batch):
    pair = make_pair()
    _up(pair)
    v6 = ipv6_packet("fd00::1", "fd00::2", b"six")
    bad = b"\x55" + ipv4_packet("10.0.0.1", "10.0.0.2", b"five")[1:]  # version 5
    if batch:
        assert pair.a.sendPackets([v6, bad]) == 1
    else:
        assert pair.a.sendPacket(v6) and not pair.a.sendPacket(bad)
    assert pair.a.counters["drop_malformed_outbound"] == 1
    pair.net.pump()
    assert [p for p, _ in pair.sink_b.packets] == [v6]


@pytest.mark.parametrize("path", ["lone", "run", "staged"])
def test_transport_data_is_padded_to_16_but_never_beyond_the_mtu(path):
    """Whitepaper 5.4.6: the plaintext is zero padded to a multiple of 16, at
    most to the MTU; the same on the lone-packet path (``sendPacket``), a run
    (``sendPackets``) and packets staged for the handshake; the receiver
    strips the padding by the IP length."""
    from .conftest import A_ADDR

    pair = make_pair()
    mtu = pair.a.mtu
    assert mtu & 15  # the cap is reachable
    lengths = [20, 21, 31, 32, 33, 700, 701, 703, mtu - 20, mtu - 5, mtu - 1, mtu]
    pkts = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes(range(256)) * 6)[:n] for n in lengths]
    pkts = [p[:2] + struct.pack("!H", len(p)) + p[4:10] + b"\0\0" + p[12:] for p in pkts]
    pkts = [p[:10] + struct.pack("!H", internet_checksum(p[:20])) + p[12:] for p in pkts]
    if path != "staged":
        _up(pair)
    start = len(pair.net.delivered)
    if path == "run":
        assert pair.a.sendPackets(pkts) == len(pkts)
    else:
        assert all(pair.a.sendPacket(p) for p in pkts)
    pair.net.pump()
    sizes = [len(d) for src, _, d in pair.net.delivered[start:] if src == A_ADDR and d[0] == 4]
    assert sizes[-len(lengths):] == [16 + min(-(-n // 16) * 16, mtu) + 16 for n in lengths]
    assert [p for p, _ in pair.sink_b.packets][-len(pkts):] == pkts
