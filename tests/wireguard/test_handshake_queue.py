"""The mux's handshake queue: initiations leave the data path, are drained within
a per-turn budget, are capped, and the queue depth is the global under-load
signal (cookie replies, then the initiators' MAC2 retries complete)."""

from __future__ import annotations

import itertools
import random

from twisted.internet.task import Clock

from nbgateway.wireguard import constants as C
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.mux import DeviceMux
from nbgateway.wireguard.testing import CollectingSink, MemoryNetwork, ipv4_packet

GW = ("192.0.2.100", 51820)


class TurnClock(Clock):
    """``Clock`` whose :meth:`turn` runs only the calls due when it starts, as one
    reactor iteration does (``advance`` also runs calls scheduled meanwhile)."""

    def turn(self) -> None:
        due = [c for c in self.calls if c.getTime() <= self.seconds()]
        for c in due:
            self.calls.remove(c)
            c.called = 1
            c.func(*c.args, **c.kw)


def _world(n_clients: int, **mux_args):
    clock = TurnClock()
    net = MemoryNetwork()
    mux = DeviceMux(clock, **mux_args)
    net.attach(mux, GW)
    sink = CollectingSink()
    dev = mux.add(WireGuardDevice(generate_private_key(), clock, sink=sink,
                                  index_registry=mux.registry, rng=random.Random(1)))
    clients = []
    for i in range(n_clients):
        client = WireGuardDevice(generate_private_key(), clock, sink=CollectingSink(),
                                 rng=random.Random(100 + i))
        net.attach(client, (f"198.51.{100 + i // 250}.{i % 250 + 1}", 40000))
        client.add_peer(dev.public_key, allowed_ips=["100.64.0.1/32"], endpoint=GW)
        dev.add_peer(client.public_key, allowed_ips=[f"100.65.{i // 250}.{i % 250 + 1}/32"])
        clients.append(client)
    return clock, net, mux, dev, sink, clients


def _initiations(net: MemoryNetwork, clients) -> list[tuple[bytes, tuple[str, int]]]:
    """Each client's initiation to the gateway, taken off the network."""
    for c in clients:
        c.initiate(next(iter(c.peers)))
    out = [(data, src) for src, dst, data in net.queue if dst == GW]
    net.queue.clear()
    assert len(out) == len(clients)
    return out


def _completed(clients) -> int:
    return sum(c.events["handshake_completed"] for c in clients)


def test_data_of_a_read_goes_first_and_initiations_drain_within_the_budget():
    clock, net, mux, dev, sink, clients = _world(11, handshake_budget=2)
    established, newcomers = clients[0], clients[1:]
    established.sendPacket(ipv4_packet("100.65.0.1", "100.64.0.1", b"hello"))
    net.pump()
    assert clock.getDelayedCalls() == [] or mux.handshake_queue_depth == 0
    assert [p for p, _ in sink.packets][-1].endswith(b"hello")

    processed_at_delivery = []
    real = sink.packetReceived

    def spy(packet: bytes, peer_key: bytes) -> None:
        processed_at_delivery.append(mux.counters["handshake_queue_processed"])
        real(packet, peer_key)

    sink.packetReceived = spy  # type: ignore[method-assign]
    base = mux.counters["handshake_queue_processed"]  # the established peer's handshake
    assert base == 1
    inits = _initiations(net, newcomers)
    established.sendPacket(ipv4_packet("100.65.0.1", "100.64.0.1", b"data"))
    data = [(d, src) for src, dst, d in net.queue if dst == GW]
    net.queue.clear()
    # one socket read: ten initiations, then a transport packet
    mux.datagramsReceived(inits + data)
    assert processed_at_delivery == [base]  # the data was delivered before any initiation
    assert dev.events["handshake_initiation_rx"] == 1 + 2  # the budget of this turn
    assert mux.handshake_queue_depth == 8
    turns = 0
    while mux.handshake_queue_depth:
        before = dev.events["handshake_initiation_rx"]
        clock.turn()
        turns += 1
        assert dev.events["handshake_initiation_rx"] - before <= 2
    assert turns == 4
    assert clock.getDelayedCalls() == [] or all(
        c.getTime() > clock.seconds() for c in clock.getDelayedCalls())
    net.pump()
    assert _completed(newcomers) == 10
    assert mux.counters["mux_drop_handshake_queue_full"] == 0


def test_queue_never_exceeds_its_cap_and_drops_are_counted_then_retried():
    clock, net, mux, _dev, _sink, clients = _world(10, queue_max=4, handshake_budget=1,
                                                  under_load_depth=1000)
    inits = _initiations(net, clients)
    mux.datagramsReceived(inits)
    assert mux.counters["mux_drop_handshake_queue_full"] == 6
    assert mux.handshake_queue_depth == 3  # four queued, one drained in this turn
    while mux.handshake_queue_depth:
        assert mux.handshake_queue_depth <= 4
        clock.advance(0)
    net.pump()
    assert _completed(clients) == 4
    # the six dropped initiators retry after REKEY_TIMEOUT (+ jitter), as the protocol says
    for _ in range(10):
        clock.advance(C.REKEY_TIMEOUT + C.REKEY_TIMEOUT_JITTER_MAX)
        while mux.handshake_queue_depth:
            clock.advance(0)
        net.pump()
        while mux.handshake_queue_depth:
            clock.advance(0)
            net.pump()
        if _completed(clients) == 10:
            break
    assert _completed(clients) == 10
    assert mux.handshake_queue_depth == 0


def test_queue_depth_puts_every_device_under_load_cookie_then_mac2_retry_completes():
    clock, net, mux, dev, _sink, clients = _world(6, handshake_budget=1, under_load_depth=3)
    mux.datagramsReceived(_initiations(net, clients))
    while mux.handshake_queue_depth:
        clock.advance(0)
    # the first pop leaves 5 >= 3 queued: under load, and it stays so for
    # UNDER_LOAD_AFTER_TIME: every initiation (no MAC2 yet) gets a cookie reply, no DH
    assert dev.events["cookie_reply_tx"] == 6
    assert dev.events["handshake_initiation_rx"] == 0
    net.pump()
    assert sum(c.events["cookie_reply_rx"] for c in clients) == 6
    assert _completed(clients) == 0
    # the retries (after REKEY_TIMEOUT, in one read) put the queue under load
    # again, but now carry a valid MAC2: they are answered with the DH work
    clock.advance(C.REKEY_TIMEOUT + C.REKEY_TIMEOUT_JITTER_MAX)
    net.pump()
    while mux.handshake_queue_depth:
        clock.advance(0)
    assert mux.under_load(clock.seconds())
    net.pump()
    assert dev.events["cookie_reply_tx"] == 6  # no second cookie
    assert dev.events["handshake_initiation_rx"] == 6
    assert _completed(clients) == 6
    clock.advance(C.UNDER_LOAD_AFTER_TIME)
    assert not mux.under_load(clock.seconds())


def test_device_own_rate_still_counts_and_removed_device_is_detached():
    clock, net, mux, dev, _sink, clients = _world(1)
    assert dev.load_probe == mux.under_load
    mux.remove(dev)
    assert dev.load_probe is None
    mux.datagramsReceived(_initiations(net, clients))
    while mux.handshake_queue_depth:
        clock.advance(0)
    assert mux.counters["mux_drop_unroutable"] == 1


def test_without_a_clock_initiations_are_handled_inline():
    clock = Clock()
    net = MemoryNetwork()
    mux = DeviceMux()
    net.attach(mux, GW)
    dev = mux.add(WireGuardDevice(generate_private_key(), clock, index_registry=mux.registry))
    assert dev.load_probe is None
    client = WireGuardDevice(generate_private_key(), clock)
    net.attach(client, ("198.51.100.1", 1))
    client.add_peer(dev.public_key, allowed_ips=["0.0.0.0/0"], endpoint=GW)
    dev.add_peer(client.public_key, allowed_ips=["100.65.0.1/32"])
    client.initiate(dev.public_key)
    net.pump()
    assert client.events["handshake_completed"] == 1
    assert clock.getDelayedCalls() == [] or mux.handshake_queue_depth == 0


def _costly(clock: TurnClock, dev: WireGuardDevice, cost: float) -> list[float]:
    """Make each datagram the device handles take ``cost`` seconds of the clock
    (without running the calls that become due meanwhile, as real work does not);
    returns the clock time at which each handling started."""
    started: list[float] = []
    real = dev.datagramsReceived

    def slow(batch) -> None:
        started.append(clock.seconds())
        real(batch)
        clock.rightNow += cost

    dev.datagramsReceived = slow  # type: ignore[method-assign]
    return started


def test_drain_stops_when_the_turns_time_budget_is_spent():
    clock, net, mux, dev, _sink, clients = _world(12, handshake_budget=8,
                                                  handshake_time_budget=0.002,
                                                  under_load_depth=1000)
    _costly(clock, dev, 0.0015)
    mux.datagramsReceived(_initiations(net, clients))
    # 1.5 ms each: the second initiation crosses the 2 ms budget, the turn ends
    assert mux.counters["handshake_queue_processed"] == 2
    assert mux.counters["handshake_queue_time_budget_spent"] == 1
    per_turn = []
    while mux.handshake_queue_depth:
        before = mux.counters["handshake_queue_processed"]
        clock.turn()
        per_turn.append(mux.counters["handshake_queue_processed"] - before)
    assert per_turn == [2, 2, 2, 2, 2]
    net.pump()
    assert _completed(clients) == 12  # nothing dropped, every handshake still completes
    assert mux.counters["mux_drop_handshake_queue_full"] == 0


def test_one_initiation_per_turn_even_when_one_exceeds_the_budget():
    clock, net, mux, dev, _sink, clients = _world(4, handshake_time_budget=0.002,
                                                  under_load_depth=1000)
    started = _costly(clock, dev, 0.010)
    mux.datagramsReceived(_initiations(net, clients))
    assert mux.counters["handshake_queue_processed"] == 1
    turns = 0
    while mux.handshake_queue_depth:
        clock.turn()
        turns += 1
    assert turns == 3
    assert mux.counters["handshake_queue_processed"] == 4
    # each started in its own turn, after the previous one's work
    assert [round(b - a, 6) for a, b in itertools.pairwise(started)] == [0.01] * 3
    net.pump()
    assert _completed(clients) == 4


def test_cheap_initiations_are_limited_by_the_count_budget_only():
    clock, net, mux, dev, _sink, clients = _world(10, handshake_budget=4,
                                                  handshake_time_budget=0.002,
                                                  under_load_depth=1000)
    _costly(clock, dev, 0.0001)
    mux.datagramsReceived(_initiations(net, clients))
    assert mux.counters["handshake_queue_processed"] == 4
    assert mux.counters["handshake_queue_time_budget_spent"] == 0
    clock.turn()
    clock.turn()
    assert mux.counters["handshake_queue_processed"] == 10
    assert mux.handshake_queue_depth == 0
