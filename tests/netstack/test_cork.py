"""Output batching: the stack hands the device one ``sendPackets`` call per TCP
output run and per inbound batch (``packetsReceived``) instead of one
``sendPacket`` per packet."""

from __future__ import annotations

import os

from twisted.internet.task import Clock

from nbgateway.netstack.stack import Stack
from nbgateway.netstack.testing import (
    PacketRecorder,
    build_icmp_echo,
    fragment_ipv4,
    make_stack_pair,
)

from .test_tcp_link import transfer


class CallRecorder(PacketRecorder):
    """Records how packets were handed over: ("one", 1) or ("many", n)."""

    def __init__(self, mtu: int = 1280) -> None:
        super().__init__(mtu)
        self.calls: list[tuple[str, int]] = []

    def sendPacket(self, packet: bytes) -> bool:
        self.calls.append(("one", 1))
        return super().sendPacket(packet)

    def sendPackets(self, packets: list[bytes]) -> int:
        self.calls.append(("many", len(packets)))
        for packet in packets:
            super().sendPacket(packet)
        return len(packets) if self.accept else 0


def _echo_stack():
    sender = CallRecorder()
    stack = Stack(sender, Clock(), ["100.64.0.1", "fd00::1"], mtu=1280)
    pings = [build_icmp_echo("100.64.0.9", "100.64.0.1", 7, seq, b"x" * seq) for seq in range(3)]
    return sender, stack, pings


def test_one_inbound_batch_leaves_as_one_flush():
    sender, stack, pings = _echo_stack()
    stack.packetsReceived(pings, b"k" * 32)
    assert sender.calls == [("many", 3)]
    assert len(sender.take()) == 3
    assert stack.counters["icmp_echo_reply_tx"] == 3


def test_single_packet_goes_straight_through():
    sender, stack, pings = _echo_stack()
    stack.packetReceived(pings[0], b"k" * 32)
    assert sender.calls == [("one", 1)]


def test_refused_packets_of_a_flush_are_counted():
    sender, stack, pings = _echo_stack()
    sender.accept = False
    stack.packetsReceived(pings, b"k" * 32)
    assert stack.counters["tx_refused"] == 3


def test_tcp_output_runs_are_batched_and_the_transfer_is_intact():
    clock = Clock()
    clock.advance(100.0)
    a, b, link = make_stack_pair(clock)
    sizes: list[int] = []
    real = link.a.sendPackets

    def record(packets):
        sizes.append(len(packets))
        return real(packets)

    link.a.sendPackets = record
    up = os.urandom(200_000)
    _client, server = transfer(clock, a, b, up, b"", 65536)
    assert bytes(server.received) == up
    assert max(sizes) > 1  # whole windows leave in one call
    assert a.counters["tx_refused"] == 0


def test_a_batch_inside_a_cork_leaves_with_the_outer_uncork():
    sender, stack, pings = _echo_stack()
    stack.cork()
    stack.packetsReceived(pings, b"k" * 32)
    assert sender.calls == []  # still corked: the batch's uncork is not the outer one
    stack.packetsReceived(pings[:1], b"k" * 32)
    assert sender.calls == []
    stack.uncork()
    assert sender.calls == [("many", 4)]


def test_after_a_batch_the_timer_follows_a_pending_reassembly_deadline():
    _sender, stack, pings = _echo_stack()
    big = build_icmp_echo("100.64.0.9", "100.64.0.1", 7, 9, b"y" * 600)
    first, *_rest = fragment_ipv4(big, 256)
    stack.packetsReceived([pings[0], first], b"k" * 32)
    assert stack.fragments.table  # waiting for the rest
    assert stack._timer is not None and stack._timer_at == stack.fragments.next_deadline()
    stack.clock.advance(stack._timer_at - stack.clock.seconds() + 0.001)
    assert not stack.fragments.table and stack._timer is None  # expired, nothing left
