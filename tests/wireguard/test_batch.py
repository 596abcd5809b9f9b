"""The batched data path: ``datagramsReceived`` (one socket read) and
``sendPackets`` (one flush of the netstack), runs per peer, and their
equivalence with the one-at-a-time entry points."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface import implementer

from nbgateway.interfaces import IDatagramBatchLink, IPacketBatchSink
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.testing import MemoryNetwork, ipv4_packet
from nbgateway.wireguard.timers import TimerConfig

G_ADDR, A_ADDR, B_ADDR = ("192.0.2.10", 51820), ("192.0.2.1", 1111), ("192.0.2.2", 2222)


@implementer(IPacketBatchSink)
class RunSink:
    """Records each call: (peer key, [packets])."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, list[bytes]]] = []

    def packetReceived(self, packet: bytes, peer_key: bytes) -> None:
        self.calls.append((peer_key, [packet]))

    def packetsReceived(self, packets: list[bytes], peer_key: bytes) -> None:
        self.calls.append((peer_key, list(packets)))

    def packets(self) -> list[bytes]:
        return [p for _, run in self.calls for p in run]


@implementer(IDatagramBatchLink)
class Capture:
    """A link that keeps what the device sends (and how: one call or a run)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, int], list[bytes]]] = []

    def sendDatagram(self, data: bytes, addr) -> None:
        self.calls.append((addr, [data]))

    def sendDatagrams(self, datagrams: list[bytes], addr) -> None:
        self.calls.append((addr, list(datagrams)))


def _star(batch_reads: bool = True):
    """Gateway G with peers A (10.0.0.1) and B (10.0.0.2), sessions up."""
    clock = Clock()
    clock.advance(1000)
    net = MemoryNetwork(batch_reads=batch_reads)
    g = WireGuardDevice(generate_private_key(), clock, sink=RunSink(), rng=random.Random(1))
    a = WireGuardDevice(generate_private_key(), clock, sink=RunSink(), rng=random.Random(2))
    b = WireGuardDevice(generate_private_key(), clock, sink=RunSink(), rng=random.Random(3))
    for dev, addr in ((g, G_ADDR), (a, A_ADDR), (b, B_ADDR)):
        net.attach(dev, addr)
    g.add_peer(a.public_key, allowed_ips=["10.0.0.1/32"], endpoint=A_ADDR)
    g.add_peer(b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=B_ADDR)
    for dev in (a, b):
        dev.add_peer(g.public_key, allowed_ips=["10.0.0.0/24"], endpoint=G_ADDR)
    for dev, src in ((a, "10.0.0.1"), (b, "10.0.0.2")):
        dev.sendPacket(ipv4_packet(src, "10.0.0.10", b"hello"))
        net.pump()
    g.sink.calls.clear()
    return clock, net, g, a, b


def _sealed(dev: WireGuardDevice, src: str, payloads: list[bytes]) -> list[bytes]:
    """The datagrams ``dev`` emits for ``payloads`` (not delivered)."""
    real = dev.link
    cap = dev.link = Capture()
    try:
        assert dev.sendPackets([ipv4_packet(src, "10.0.0.10", p) for p in payloads]) == len(
            payloads)
    finally:
        dev.link = real
    return [d for _, run in cap.calls for d in run]


def test_one_read_is_delivered_per_peer_run_in_order():
    _, _, g, a, b = _star()
    a1, a2, a3 = _sealed(a, "10.0.0.1", [b"a1", b"a2", b"a3"])
    b1, b2 = _sealed(b, "10.0.0.2", [b"b1", b"b2"])
    before = g.counters
    g.datagramsReceived([(a1, A_ADDR), (a2, A_ADDR), (b1, B_ADDR), (a1, A_ADDR),
                         (b"\x07" * 40, A_ADDR), (a3, A_ADDR), (b2, B_ADDR)])
    runs = [(key, [p[20:] for p in pkts]) for key, pkts in g.sink.calls]
    assert runs == [(a.public_key, [b"a1", b"a2"]), (b.public_key, [b"b1"]),
                    (a.public_key, [b"a3"]), (b.public_key, [b"b2"])]
    after = g.counters
    assert after["data_rx"] - before["data_rx"] == 5
    assert after["drop_replay"] - before["drop_replay"] == 1
    assert after["drop_malformed"] - before["drop_malformed"] == 1


def test_handshake_in_the_middle_of_a_read_is_handled_in_order():
    clock, net, g, a, _b = _star()
    c = WireGuardDevice(generate_private_key(), clock, sink=RunSink())
    net.attach(c, ("192.0.2.3", 3333))
    c.add_peer(g.public_key, allowed_ips=["10.0.0.0/24"], endpoint=G_ADDR)
    g.add_peer(c.public_key, allowed_ips=["10.0.0.3/32"])
    a1, a2 = _sealed(a, "10.0.0.1", [b"a1", b"a2"])
    c.sendPacket(ipv4_packet("10.0.0.3", "10.0.0.10", b"c1"))  # staged, initiation queued
    (_, _, initiation), = list(net.queue)
    net.queue.clear()
    g.datagramsReceived([(a1, A_ADDR), (initiation, ("192.0.2.3", 3333)), (a2, A_ADDR)])
    assert [p[20:] for p in g.sink.packets()] == [b"a1", b"a2"]
    assert g.counters["handshake_response_tx"] >= 1
    net.pump()  # response -> c, c's staged packet -> g
    assert [p[20:] for p in g.sink.packets()] == [b"a1", b"a2", b"c1"]


def test_keepalive_only_run_counts_and_does_not_arm_send_keepalive():
    _, _, g, a, _ = _star()
    peer = g.peers[a.public_key]
    peer.timers.send_keepalive = None
    real = a.link
    cap = a.link = Capture()
    a._send_keepalive(a.peers[g.public_key])
    a._send_keepalive(a.peers[g.public_key])
    a.link = real
    before = g.counters["keepalive_rx"]
    g.datagramsReceived([(d, A_ADDR) for _, run in cap.calls for d in run])
    assert g.counters["keepalive_rx"] == before + 2
    assert peer.timers.send_keepalive is None
    assert g.sink.calls == []


def test_roaming_takes_the_last_authenticated_source_of_a_run():
    _, _, g, a, _ = _star()
    a1, a2 = _sealed(a, "10.0.0.1", [b"a1", b"a2"])
    g.datagramsReceived([(a1, ("198.51.100.1", 1)), (a2, ("198.51.100.2", 2)),
                         (b"\x04\0\0\0" + bytes(40), ("203.0.113.9", 9))])
    assert g.peers[a.public_key].endpoint == ("198.51.100.2", 2)


def test_send_packets_runs_per_peer_and_counts():
    _, net, g, a, _b = _star()
    to = lambda dst, p: ipv4_packet("10.0.0.10", dst, p)  # noqa: E731
    # the first data packet after a receive arms the new-handshake timer (slow path)
    g.sendPackets([to("10.0.0.1", b"x0"), to("10.0.0.2", b"y0")])
    net.pump()
    a.sink.calls.clear()
    cap = g.link = Capture()
    sent = g.sendPackets([to("10.0.0.1", b"x1"), to("10.0.0.1", b"x2"), to("10.0.0.2", b"y1"),
                          to("10.9.9.9", b"nowhere"), b"\x45" * 3, to("10.0.0.1", b"x3")])
    assert sent == 4
    assert [(addr, len(run)) for addr, run in cap.calls] == [(A_ADDR, 2), (B_ADDR, 1),
                                                             (A_ADDR, 1)]
    assert g.counters["drop_no_route"] == 1 and g.counters["drop_malformed_outbound"] == 1
    a.datagramsReceived([(d, G_ADDR) for addr, run in cap.calls if addr == A_ADDR for d in run])
    assert [p[20:] for p in a.sink.packets()] == [b"x1", b"x2", b"x3"]
    peer = g.peers[a.public_key]
    assert peer.tx_bytes >= sum(len(d) for addr, run in cap.calls if addr == A_ADDR
                                for d in run)


def test_persistent_keepalive_peer_sends_in_runs_and_rearms_the_keepalive():
    clock, net, g, a, _b = _star()
    g.update_peer(a.public_key, persistent_keepalive=25)
    to = lambda p: ipv4_packet("10.0.0.10", "10.0.0.1", p)  # noqa: E731
    g.sendPackets([to(b"x0")])  # arms the new-handshake timer (slow path)
    net.pump()
    clock.advance(10)
    cap = g.link = Capture()
    assert g.sendPackets([to(b"x1"), to(b"x2"), to(b"x3")]) == 3
    assert [(addr, len(run)) for addr, run in cap.calls] == [(A_ADDR, 3)]  # one run
    # "authenticated packet traversal": the persistent keepalive moved 25 s past now
    assert g.peers[a.public_key].timers.persistent_keepalive == clock.seconds() + 25
    a.datagramsReceived([(d, G_ADDR) for _, run in cap.calls for d in run])
    assert [p[20:] for p in a.sink.packets()][-3:] == [b"x1", b"x2", b"x3"]


def test_send_packets_stages_until_the_handshake_then_flushes_in_order():
    clock = Clock()
    net = MemoryNetwork()
    x = WireGuardDevice(generate_private_key(), clock, sink=RunSink())
    y = WireGuardDevice(generate_private_key(), clock, sink=RunSink())
    net.attach(x, A_ADDR)
    net.attach(y, B_ADDR)
    x.add_peer(y.public_key, allowed_ips=["10.0.0.2/32"], endpoint=B_ADDR)
    y.add_peer(x.public_key, allowed_ips=["10.0.0.1/32"])
    pkts = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 30) for i in range(5)]
    assert x.sendPackets(pkts) == 5
    net.pump()
    assert y.sink.packets() == pkts


def test_rekey_after_messages_is_honoured_inside_one_flush():
    clock = Clock()
    net = MemoryNetwork()
    timers = TimerConfig(rekey_after_messages=4)
    x = WireGuardDevice(generate_private_key(), clock, sink=RunSink(), timers=timers)
    y = WireGuardDevice(generate_private_key(), clock, sink=RunSink(), timers=timers)
    net.attach(x, A_ADDR)
    net.attach(y, B_ADDR)
    x.add_peer(y.public_key, allowed_ips=["10.0.0.2/32"], endpoint=B_ADDR)
    y.add_peer(x.public_key, allowed_ips=["10.0.0.1/32"])
    x.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"first"))
    net.pump()
    before = x.counters["handshake_initiation_tx"]
    x.sendPackets([ipv4_packet("10.0.0.1", "10.0.0.2", b"n")] * 6)
    assert x.counters["handshake_initiation_tx"] == before + 1  # the 4th message rekeys
    net.pump()
    assert len(y.sink.packets()) == 7


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(["ok", "dup", "junk"])),
                max_size=40))
def test_batched_and_one_by_one_reads_agree(script):
    """The same datagrams, read as one batch or one at a time, give the same
    packets to the sink (in order) and the same counters."""
    results = []
    for batch_reads in (True, False):
        _, _, g, a, b = _star(batch_reads)
        items = []
        for who, kind in script:
            dev, src, addr = (a, "10.0.0.1", A_ADDR) if who == "a" else (b, "10.0.0.2", B_ADDR)
            if kind == "junk":
                items.append((b"\x04\0\0\0" + bytes(44), addr))
                continue
            (d,) = _sealed(dev, src, [f"{who}{len(items)}".encode()])
            items.append((d, addr))
            if kind == "dup":
                items.append((d, addr))
        if batch_reads:
            g.datagramsReceived(items)
        else:
            for d, addr in items:
                g.datagramReceived(d, addr)
        counters = g.counters
        results.append(([p[20:] for p in g.sink.packets()],
                        {k: counters[k] for k in ("data_rx", "drop_replay", "drop_unknown_index")}))
    assert results[0] == results[1]


def test_a_failing_settle_is_counted_and_never_redelivers_a_run():
    _, _, g, a, b = _star()
    a1, a2, a3 = _sealed(a, "10.0.0.1", [b"a1", b"a2", b"a3"])
    (b1,) = _sealed(b, "10.0.0.2", [b"b1"])
    g.peers[a.public_key].persistent_keepalive = 25

    def broken(peer, now):
        raise RuntimeError("boom")

    g._authenticated_traversal = broken
    g.datagramsReceived([(a1, A_ADDR), (a2, A_ADDR), (b1, B_ADDR), (a3, A_ADDR)])
    delivered = [p[20:] for p in g.sink.packets()]
    assert delivered == [b"b1"]  # a's runs failed before their hand-over, once each
    assert g.counters["drop_internal_error"] == 2


def test_send_packet_encrypts_as_a_send_packets_run_of_one():
    """``sendPacket``'s own path (IPv4, cached route, fresh session) sends the
    datagram ``sendPackets([packet])`` would, with the same counters, byte
    counts and timers; the cases it does not take fall back and still send."""
    _, _, g, a, _ = _star()
    peer = g.peers[a.public_key]
    real = g.link
    for size in (0, 1, 15, 16, 17, 100, 700):
        packet = ipv4_packet("10.0.0.10", "10.0.0.1", b"p" * size)
        results = []
        for send in (lambda p: g.sendPackets([p]) == 1, g.sendPacket,
                     lambda p: g.sendPacket(p, bytes([10, 0, 0, 1]))):
            kp = peer.current
            start = kp.send_counter
            peer.timers.new_handshake = peer.timers.send_keepalive = None
            tx, data_tx = peer.tx_bytes, g.counters["data_tx"]
            cap = g.link = Capture()
            assert send(packet)
            results.append((cap.calls, kp.send_counter - start, peer.tx_bytes - tx,
                            g.counters["data_tx"] - data_tx, peer.timers.send_keepalive,
                            peer.timers.new_handshake is not None))
            kp.send_counter = start  # the second sender encrypts with the same nonce
        assert results[0] == results[1] == results[2]
        assert results[0][1:4] == (1, len(results[0][0][0][1][0]), 1)
    g.link = real
    # not taken (an uncached route, IPv6): sendPackets sends it all the same,
    # routed by the packet's own header whether the destination is given or not
    g._route_cache.clear()
    cap = g.link = Capture()
    assert g.sendPacket(ipv4_packet("10.0.0.10", "10.0.0.1", b"x"))
    g._route_cache.clear()
    assert g.sendPacket(ipv4_packet("10.0.0.10", "10.0.0.1", b"y"), bytes([10, 0, 0, 1]))
    assert g.sendPacket(ipv4_packet("10.0.0.10", "10.0.0.99", b"x")) is False  # no route
    assert g.sendPacket(ipv4_packet("10.0.0.10", "10.0.0.99", b"x"), b"\x0a\0\0\x63") is False
    assert len(cap.calls) == 2
    assert g.packet_sender_takes_dst
    g.link = real
