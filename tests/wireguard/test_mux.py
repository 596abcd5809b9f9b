"""Several account devices behind one UDP port."""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock

from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.mux import DeviceMux
from nbgateway.wireguard.testing import CollectingSink, MemoryNetwork, ipv4_packet

GW = ("192.0.2.100", 51820)


def test_two_accounts_share_one_port_with_overlapping_addresses():
    clock = Clock()
    net = MemoryNetwork()
    mux = DeviceMux()
    net.attach(mux, GW)
    accounts, clients = [], []
    for i in range(2):
        sink = CollectingSink()
        dev = mux.add(WireGuardDevice(generate_private_key(), clock, sink=sink,
                                      index_registry=mux.registry, rng=random.Random(i)))
        client = WireGuardDevice(generate_private_key(), clock, sink=CollectingSink())
        addr = (f"198.51.100.{i + 1}", 40000)
        net.attach(client, addr)
        # both accounts use the same tunnel addresses: isolation is by device
        client.add_peer(dev.public_key, allowed_ips=["100.64.0.1/32"], endpoint=GW)
        dev.add_peer(client.public_key, allowed_ips=["100.64.0.2/32"])
        accounts.append((dev, sink))
        clients.append(client)
    assert mux.link is not None and all(d.link is mux.link for d, _ in accounts)
    for i, client in enumerate(clients):
        client.sendPacket(ipv4_packet("100.64.0.2", "100.64.0.1", b"acct%d" % i))
    net.pump()
    for i, (dev, sink) in enumerate(accounts):
        assert [p for p, _ in sink.packets] == [
            ipv4_packet("100.64.0.2", "100.64.0.1", b"acct%d" % i)]
        # replies route back through the shared port to the right client
        dev.sendPacket(ipv4_packet("100.64.0.1", "100.64.0.2", b"reply%d" % i))
    net.pump()
    for i, client in enumerate(clients):
        assert client.sink.packets[-1][0].endswith(b"reply%d" % i)


def test_unknown_key_and_index_are_counted():
    clock = Clock()
    net = MemoryNetwork()
    mux = DeviceMux()
    net.attach(mux, GW)
    mux.add(WireGuardDevice(generate_private_key(), clock, index_registry=mux.registry))
    stranger = WireGuardDevice(generate_private_key(), clock)
    net.attach(stranger, ("198.51.100.9", 1))
    other_gw_key = WireGuardDevice(generate_private_key(), clock).public_key
    stranger.add_peer(other_gw_key, allowed_ips=["0.0.0.0/0"], endpoint=GW)
    stranger.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    net.pump()
    mux.datagramReceived(b"\x04\x00\x00\x00" + bytes(28), ("198.51.100.9", 1))
    mux.datagramReceived(b"\x01\x00", ("198.51.100.9", 1))
    assert mux.counters["mux_drop_unroutable"] == 2
    assert mux.counters["mux_drop_malformed"] == 1


def test_remove_releases_indices_and_requires_registry():
    clock = Clock()
    mux = DeviceMux()
    dev = mux.add(WireGuardDevice(generate_private_key(), clock, index_registry=mux.registry))
    peer_dev = WireGuardDevice(generate_private_key(), clock)
    dev.add_peer(peer_dev.public_key, endpoint=("198.51.100.1", 1))

    class Null:
        def sendDatagram(self, data, addr):
            pass

    mux.link = Null()
    dev.initiate(peer_dev.public_key)
    assert mux.registry.owners
    mux.remove(dev)
    assert not mux.registry.owners
    with pytest.raises(ValueError):
        mux.add(WireGuardDevice(generate_private_key(), clock))


def test_one_read_with_both_accounts_interleaved_reaches_each_device_in_runs():
    clock = Clock()
    net = MemoryNetwork()
    mux = DeviceMux()
    net.attach(mux, GW)
    devices, clients = [], []
    for i in range(2):
        dev = mux.add(WireGuardDevice(generate_private_key(), clock, sink=CollectingSink(),
                                      index_registry=mux.registry))
        client = WireGuardDevice(generate_private_key(), clock, sink=CollectingSink())
        net.attach(client, (f"198.51.100.{i + 1}", 40000))
        client.add_peer(dev.public_key, allowed_ips=["100.64.0.1/32"], endpoint=GW)
        dev.add_peer(client.public_key, allowed_ips=["100.64.0.2/32"])
        client.sendPacket(ipv4_packet("100.64.0.2", "100.64.0.1", b"hello"))
        net.pump()
        devices.append(dev)
        clients.append(client)
    # capture each client's next datagrams, then deliver them as one interleaved read
    sealed = []
    for i, client in enumerate(clients):
        net.queue.clear()
        client.sendPackets([ipv4_packet("100.64.0.2", "100.64.0.1", b"%d-%d" % (i, k))
                            for k in range(3)])
        sealed.append([(d, src) for src, _, d in net.queue])
    net.queue.clear()
    calls = []
    for dev in devices:
        real = dev.datagramsReceived
        dev.datagramsReceived = lambda batch, real=real, dev=dev: (
            calls.append((dev, len(batch))), real(batch))
    a, b = sealed
    mux.datagramsReceived([a[0], a[1], b[0], b[1], a[2], b[2], (b"\x04" * 3, a[0][1])])
    assert calls == [(devices[0], 2), (devices[1], 2), (devices[0], 1), (devices[1], 1)]
    for i, dev in enumerate(devices):
        assert [p[20:] for p, _ in dev.sink.packets[1:]] == [b"%d-%d" % (i, k) for k in range(3)]
    assert mux.counters["mux_drop_malformed"] == 1
