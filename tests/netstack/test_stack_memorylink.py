"""MemoryLink: delivery through the clock, MTU, and the seeded fault model."""

from __future__ import annotations

import pytest
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from nbgateway.netstack.testing import MemoryLink, StubTCP, advance, make_stack_pair
from nbgateway.netstack.udp import listen_udp


class Sink:
    def __init__(self):
        self.got = []

    def packetReceived(self, packet, peer_key):
        self.got.append((packet, peer_key))


def test_delivery_latency_and_keys():
    clock = Clock()
    link = MemoryLink(clock, latency=0.5)
    a, b = Sink(), Sink()
    link.attach(a, b)
    assert link.a.sendPacket(b"p1") and link.b.sendPacket(b"p2")
    assert a.got == b.got == [] and link.in_flight == 2
    assert len(clock.getDelayedCalls()) == 1  # one re-armed call, not one per packet
    clock.advance(0.5)
    assert b.got == [(b"p1", link.a.key)] and a.got == [(b"p2", link.b.key)]
    assert not link.a.sendPacket(b"x" * 1281)
    assert link.counters["oversize"] == 1


def test_fault_model_is_seeded_and_counts():
    def run(seed):
        clock = Clock()
        link = MemoryLink(clock, seed=seed, drop=0.2, reorder=0.3, duplicate=0.2, corrupt=0.1)
        sink = Sink()
        link.attach(Sink(), sink)
        for i in range(300):
            link.a.sendPacket(i.to_bytes(2, "big") * 10)
            clock.advance(0.0005)
        advance(clock, 1.0)
        return [p for p, _k in sink.got], link.counters

    got1, c1 = run(7)
    got2, c2 = run(7)
    got3, _c3 = run(8)
    assert got1 == got2 and c1 == c2 and got1 != got3
    for k in ("dropped", "reordered", "duplicated", "corrupted"):
        assert c1[k] > 0
    assert c1["delivered"] == 300 - c1["dropped"] + c1["duplicated"]
    order = [int.from_bytes(p[:2], "big") for p in got1]
    assert order != sorted(order)  # reordering happened


def test_link_down_and_tap_and_close():
    clock = Clock()
    link = MemoryLink(clock)
    seen = []
    link.tap = lambda end, pkt: seen.append((end, pkt))
    sink = Sink()
    link.attach(Sink(), sink)
    link.up = False
    link.a.sendPacket(b"lost")
    link.up = True
    link.a.sendPacket(b"queued")
    link.close()
    advance(clock, 0.1)
    assert sink.got == [] and seen == [("a", b"lost"), ("a", b"queued")]
    assert clock.getDelayedCalls() == []


def test_udp_over_lossy_link_between_stacks():
    clock = Clock()
    a, b, link = make_stack_pair(clock, tcp_factory=StubTCP, drop=0.3, duplicate=0.3, seed=3)

    class Count(DatagramProtocol):
        def __init__(self):
            self.got = []

        def datagramReceived(self, data, addr):
            self.got.append(data)

    server = Count()
    listen_udp(b, 9, server)
    cport = listen_udp(a, 0, Count())
    for i in range(100):
        cport.write(b"%d" % i, ("100.64.0.2", 9))
    advance(clock, 0.1)
    assert link.counters["dropped"] > 0 and link.counters["duplicated"] > 0
    assert len(server.got) == link.counters["delivered"]
    assert set(server.got) <= {b"%d" % i for i in range(100)}
    assert b.counters["error_internal"] == 0


def test_scripted_faults():
    clock = Clock()
    link = MemoryLink(clock, latency=0.01, jitter=0.02)
    sink = Sink()
    link.attach(Sink(), sink)
    script = {0: "drop", 1: "delay", 2: "duplicate", 3: "corrupt", 4: "pass"}
    link.fault = lambda end, i, pkt: script.get(i)
    for i in range(6):
        link.a.sendPacket(bytes((i, i)))
    advance(clock, 0.1)
    got = [p for p, _k in sink.got]
    assert got == [b"\x02\x02", b"\x03\x02", b"\x04\x04", b"\x05\x05", b"\x02\x02",
                   b"\x01\x01"]
    assert link.counters["dropped"] == 1 and link.counters["duplicated"] == 1
    link.fault = lambda end, i, pkt: "explode"
    with pytest.raises(ValueError):
        link.a.sendPacket(b"x")


def test_run_until_jumps_between_events():
    from nbgateway.netstack.testing import run_until

    clock = Clock()
    link = MemoryLink(clock, latency=5.0)
    sink = Sink()
    link.attach(Sink(), sink)
    link.a.sendPacket(b"slow")
    assert run_until(clock, lambda: bool(sink.got), timeout=10.0)
    assert clock.seconds() == 5.0
    assert not run_until(clock, lambda: len(sink.got) == 2, timeout=10.0)  # nothing scheduled
    link.a.sendPacket(b"slower")
    assert not run_until(clock, lambda: len(sink.got) == 2, timeout=1.0)
    assert clock.seconds() == 6.0
