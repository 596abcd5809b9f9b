"""The per-stack packet filter: rule matching and where the stack applies it."""

from __future__ import annotations

import pytest
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from nbgateway.netstack.filter import ALLOW, DENY, PacketFilter, Rule
from nbgateway.netstack.stack import Stack
from nbgateway.netstack.testing import (
    TCP_ACK,
    TCP_SYN,
    PacketRecorder,
    StubTCP,
    build_icmp_echo,
    build_tcp,
    build_udp,
    packed,
)
from nbgateway.netstack.udp import listen_udp

ME4, ME6 = "100.64.0.1", "fd00::1"
GOOD, BAD, BAD6 = "100.64.1.5", "100.64.2.5", "fd00:2::5"
KEY = b"\x04" * 32


def test_rule_matching():
    f = PacketFilter([
        Rule.make(DENY, sources=["100.64.2.0/24", "fd00:2::/64"]),
        Rule.make(ALLOW, protocols=[6], ports=[443, (8000, 8999)]),
        Rule.make(ALLOW, peer_keys=[KEY], protocols=[17]),
    ], default=DENY)
    assert f.active
    assert not f.allows(packed(BAD), 6, 443)
    assert not f.allows(packed(BAD6), 6, 443)
    assert f.allows(packed(GOOD), 6, 443) and f.allows(packed(GOOD), 6, 8500)
    assert not f.allows(packed(GOOD), 6, 22)
    assert not f.allows(packed(GOOD), 1, None)  # port rules never match ICMP
    assert f.allows(packed(GOOD), 17, 53, KEY) and not f.allows(packed(GOOD), 17, 53, b"x" * 32)
    assert f.allows(packed("fd00:3::1"), 6, 443)  # IPv6 source outside the denied prefix
    assert not PacketFilter().active and PacketFilter().allows(packed(BAD), 6, 1)
    with pytest.raises(ValueError):
        Rule.make("maybe")
    with pytest.raises(ValueError):
        Rule.make(ALLOW, ports=[(10, 5)])
    with pytest.raises(ValueError):
        f.set_rules([], default="perhaps")
    f.set_rules([])
    assert not f.active


def make():
    clock = Clock()
    rec = PacketRecorder()
    stack = Stack(rec, clock, [ME4, ME6], tcp_factory=StubTCP)
    stack.filter.set_rules([Rule.make(DENY, sources=["100.64.2.0/24"])])
    return stack, rec


def test_tcp_syn_filtered_other_segments_pass():
    stack, rec = make()
    stack.packetReceived(build_tcp(BAD, ME4, 1, 80, flags=TCP_SYN), KEY)
    assert stack.counters["drop_filtered"] == 1 and stack.tcp.segments == []
    stack.packetReceived(build_tcp(BAD, ME4, 1, 80, flags=TCP_ACK), KEY)
    stack.packetReceived(build_tcp(GOOD, ME4, 1, 80, flags=TCP_SYN), KEY)
    assert len(stack.tcp.segments) == 2 and rec.packets == []


class Sink(DatagramProtocol):
    def __init__(self):
        self.got = []

    def datagramReceived(self, data, addr):
        self.got.append(data)


def test_udp_filtered_without_icmp_and_ephemeral_exempt():
    stack, rec = make()
    server = Sink()
    listen_udp(stack, 53, server)
    client = Sink()
    cport = listen_udp(stack, 0, client)
    stack.packetReceived(build_udp(BAD, ME4, 1, 53, b"deny"), KEY)
    stack.packetReceived(build_udp(BAD, ME4, 1, 54, b"closed"), KEY)  # no port unreachable
    stack.packetReceived(build_udp(GOOD, ME4, 1, 53, b"ok"), KEY)
    stack.packetReceived(build_udp(BAD, ME4, 53, cport.getHost().port, b"reply"), KEY)
    assert server.got == [b"ok"] and client.got == [b"reply"]
    assert stack.counters["drop_filtered"] == 2 and rec.packets == []


def test_echo_filtered():
    stack, rec = make()
    stack.packetReceived(build_icmp_echo(BAD, ME4, 1, 1), KEY)
    assert stack.counters["drop_filtered"] == 1 and rec.packets == []
    stack.packetReceived(build_icmp_echo(GOOD, ME4, 1, 1), KEY)
    assert len(rec.packets) == 1
