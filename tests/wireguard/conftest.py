"""Fixtures for WireGuard unit tests: two devices on an in-memory network."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from twisted.internet.task import Clock

from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key, public_key
from nbgateway.wireguard.testing import CollectingSink, MemoryNetwork
from nbgateway.wireguard.timers import TimerConfig

A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("192.0.2.2", 51820)


@dataclass
class Pair:
    clock: Clock
    net: MemoryNetwork
    a: WireGuardDevice
    b: WireGuardDevice
    sink_a: CollectingSink
    sink_b: CollectingSink

    def run(self, seconds: float, step: float = 0.05) -> None:
        """Advance time in small steps, delivering datagrams as we go."""
        end = self.clock.seconds() + seconds
        self.net.pump()
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))
            self.net.pump()


def make_pair(timers: TimerConfig | None = None, psk: bytes | None = None, **kw) -> Pair:
    clock = Clock()
    clock.advance(1000.0)
    net = MemoryNetwork()
    ka, kb = generate_private_key(), generate_private_key()
    sink_a, sink_b = CollectingSink(), CollectingSink()
    rng = random.Random(7)
    a = WireGuardDevice(ka, clock, sink=sink_a, timers=timers, rng=rng, **kw)
    b = WireGuardDevice(kb, clock, sink=sink_b, timers=timers, rng=rng, **kw)
    net.attach(a, A_ADDR)
    net.attach(b, B_ADDR)
    a.add_peer(public_key(kb), allowed_ips=["10.0.0.2/32", "fd00::2/128"], endpoint=B_ADDR,
               preshared_key=psk)
    b.add_peer(public_key(ka), allowed_ips=["10.0.0.1/32", "fd00::1/128"], preshared_key=psk)
    return Pair(clock, net, a, b, sink_a, sink_b)


@pytest.fixture
def pair() -> Pair:
    return make_pair()
