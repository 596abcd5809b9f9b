"""review15 F2: under load, initiations that carry a valid MAC2 (the sender
proved its address with a cookie) are not rate-limited per source address:
every one of them costs the X25519 work of consuming it.  All accounts'
devices share one UDP port, one reactor and one handshake queue, so one
address (a hostile tenant's peer: it knows its own gateway's public key)
spends the handshake budget every other tenant needs.  wireguard-go's
RoutineHandshake, under load, lets each source IP through a token bucket
(20 per second, burst 5) after the MAC2 check; here nothing does."""

from __future__ import annotations

import random

from twisted.internet.task import Clock

from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.testing import CollectingSink, MemoryNetwork

GW = ("192.0.2.100", 51820)
ATTACKER_IP = "203.0.113.7"


def test_initiations_with_a_valid_mac2_are_rate_limited_per_source_ip_under_load():
    clock = Clock()
    clock.advance(1000.0)
    net = MemoryNetwork()
    gw = WireGuardDevice(generate_private_key(), clock, sink=CollectingSink(),
                         rng=random.Random(1))
    gw.load_probe = lambda now: True  # the shared handshake queue is deep
    net.attach(gw, GW)
    clients = []
    for i in range(40):  # 40 keys the gateway does not know, one source IP
        c = WireGuardDevice(generate_private_key(), clock, sink=CollectingSink(),
                            rng=random.Random(100 + i))
        net.attach(c, (ATTACKER_IP, 40000 + i))
        c.add_peer(gw.public_key, allowed_ips=["100.64.0.1/32"], endpoint=GW)
        c.initiate(gw.public_key)
        clients.append(c)
    net.pump()
    assert gw.counters["cookie_reply_tx"] == 40  # each proves the address once
    assert sum(c.counters["cookie_reply_rx"] for c in clients) == 40
    clock.advance(0.2)
    for c in clients:  # now with MAC2, all within the same second
        c.peers[gw.public_key].last_initiation_sent = None
        c.initiate(gw.public_key)
    net.pump()
    consumed = (gw.counters["drop_unknown_peer"] + gw.counters["handshake_initiation_rx"]
                + gw.counters["drop_decrypt"])
    # at most a small burst from one address reaches the Diffie-Hellman work
    assert consumed <= 10, consumed
