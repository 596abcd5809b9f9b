"""The mux's source-address hint for MAC1 routing: an initiation from an address
is tried first against the device the last one from there was routed to; MAC1
still decides, the hints are bounded and forget removed devices."""

from __future__ import annotations

import random

from twisted.internet.task import Clock

from nbgateway.wireguard import constants as C
from nbgateway.wireguard import mux as mux_module
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.mux import DeviceMux
from nbgateway.wireguard.testing import CollectingSink, MemoryNetwork

GW = ("192.0.2.100", 51820)


def _world(n_devices: int):
    clock = Clock()
    net = MemoryNetwork()
    mux = DeviceMux()  # initiations inline: routing is what is under test
    net.attach(mux, GW)
    devices, clients = [], []
    for i in range(n_devices):
        dev = mux.add(WireGuardDevice(generate_private_key(), clock, sink=CollectingSink(),
                                      index_registry=mux.registry, rng=random.Random(i)))
        client = WireGuardDevice(generate_private_key(), clock, sink=CollectingSink(),
                                 rng=random.Random(100 + i))
        net.attach(client, (f"198.51.100.{i + 1}", 40000 + i))
        client.add_peer(dev.public_key, allowed_ips=["100.64.0.1/32"], endpoint=GW)
        dev.add_peer(client.public_key, allowed_ips=["100.64.0.2/32"])
        devices.append(dev)
        clients.append(client)
    return clock, net, mux, devices, clients


def _initiation(net: MemoryNetwork, client: WireGuardDevice) -> tuple[bytes, tuple]:
    client.initiate(next(iter(client.peers)))
    out = [(data, src) for src, dst, data in net.queue if dst == GW]
    net.queue.clear()
    assert len(out) == 1
    return out[0]


def test_retries_from_an_endpoint_route_through_its_hint_and_complete():
    clock, net, mux, devices, clients = _world(6)
    client, dev = clients[4], devices[4]
    mux.datagramsReceived([_initiation(net, client)])
    assert dev.events["handshake_initiation_rx"] == 1
    assert mux.counters["mux_mac1_hint_hit"] == 0  # first from this address: a scan
    net.pump()
    assert client.events["handshake_completed"] == 1
    for n in range(1, 4):  # rekeys from the same endpoint
        clock.advance(C.REKEY_TIMEOUT + 1)
        mux.datagramsReceived([_initiation(net, client)])
        assert mux.counters["mux_mac1_hint_hit"] == n
        net.pump()
    assert dev.events["handshake_initiation_rx"] == 4
    assert client.events["handshake_completed"] == 4
    assert sum(d.events["handshake_initiation_rx"] for d in devices) == 4


def test_a_wrong_hint_falls_back_to_the_scan_and_is_replaced():
    _clock, net, mux, devices, clients = _world(5)
    first, addr = _initiation(net, clients[1])
    mux.datagramsReceived([(first, addr)])
    assert devices[1].events["handshake_initiation_rx"] == 1
    # another peer's initiation arrives from the same address (a shared NAT, or
    # anyone: MAC1 is computable from public keys): MAC1 decides, not the hint
    data, _ = _initiation(net, clients[3])
    mux.datagramsReceived([(data, addr)])
    assert devices[3].events["handshake_initiation_rx"] == 1
    assert devices[1].events["handshake_initiation_rx"] == 1
    assert mux.counters["mux_mac1_hint_hit"] == 0
    assert mux._addr_hints[addr][1] is devices[3]
    # garbage MAC1 from a hinted address routes nowhere
    bad = bytearray(data)
    bad[-32] ^= 1
    mux.datagramsReceived([(bytes(bad), addr)])
    assert mux.counters["mux_drop_unroutable"] == 1


def test_hints_are_bounded_oldest_first_and_forget_removed_devices(monkeypatch):
    monkeypatch.setattr(mux_module, "ADDR_HINTS_MAX", 3)
    _clock, net, mux, devices, clients = _world(5)
    addrs = []
    for i, client in enumerate(clients):
        data, _ = _initiation(net, client)
        addrs.append(("203.0.113.1", 1000 + i))
        mux.datagramsReceived([(data, addrs[-1])])
        assert devices[i].events["handshake_initiation_rx"] == 1
        assert len(mux._addr_hints) <= 3
    assert list(mux._addr_hints) == addrs[2:]
    mux.remove(devices[3])
    assert list(mux._addr_hints) == [addrs[2], addrs[4]]
    assert all(entry[1] is not devices[3] for entry in mux._addr_hints.values())
