"""review15 F3: every account's devices share one WireGuard port and one
handshake queue (1,024 initiations, FIFO, drop-tail).  Initiations are queued
before any check (MAC1 is computed at drain time), so one source address
sending initiation-sized garbage fills the queue, and other accounts'
peers' initiations are dropped for as long as the flood lasts (each drain
turn frees 8 slots, the flood's next read takes them).  One source address
should never hold more than a share of the queue."""

from __future__ import annotations

import random

from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.mux import HANDSHAKE_QUEUE_MAX, DeviceMux
from nbgateway.wireguard.testing import CollectingSink, MemoryNetwork
from tests.wireguard.test_handshake_queue import TurnClock

GW = ("192.0.2.100", 51820)


def test_one_source_cannot_fill_the_shared_handshake_queue():
    clock = TurnClock()
    net = MemoryNetwork()
    mux = DeviceMux(clock)
    net.attach(mux, GW)
    dev_b = mux.add(WireGuardDevice(generate_private_key(), clock, sink=CollectingSink(),
                                    index_registry=mux.registry, rng=random.Random(1)))
    victim = WireGuardDevice(generate_private_key(), clock, sink=CollectingSink(),
                             rng=random.Random(2))
    net.attach(victim, ("198.51.100.20", 40000))
    victim.add_peer(dev_b.public_key, allowed_ips=["100.64.0.1/32"], endpoint=GW)
    dev_b.add_peer(victim.public_key, allowed_ips=["100.64.0.2/32"])
    rng = random.Random(3)
    junk = [(b"\x01\x00\x00\x00" + rng.randbytes(144), ("203.0.113.7", 1000 + i))
            for i in range(HANDSHAKE_QUEUE_MAX + 64)]
    # one address, initiation-sized, MAC1 valid for nobody: two socket reads
    # before the next drain turn (the first read's drain took 8)
    mux.datagramsReceived(junk[:HANDSHAKE_QUEUE_MAX])
    mux.datagramsReceived(junk[HANDSHAKE_QUEUE_MAX:])
    def drops():
        return (mux.counters["mux_drop_handshake_queue_full"]
                + mux.counters["mux_drop_handshake_source_share"])

    flood_dropped = drops()
    assert flood_dropped > 0  # the flood itself is cut
    victim.initiate(dev_b.public_key)
    net.pump()  # the victim's initiation arrives behind the flood
    assert drops() == flood_dropped, \
        "another account's peer was dropped: one source filled the queue"
