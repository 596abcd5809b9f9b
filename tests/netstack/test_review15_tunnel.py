"""review15 pins: the tunnel between hostile tenants.

- Two accounts behind one WireGuard port with the same tunnel addresses: a
  peer of account A whose inner packets claim another A peer's address, B's
  peer's address or the gateway's own address is dropped by A's device
  (``drop_disallowed_source``) and nothing reaches B's netstack; A's honest
  packets reach A's only.
- A tenant's tunnel target at the gateway's own tunnel address (a private L4
  service relaying to itself): the netstack has no loopback, the dial leaves
  towards the link and never reaches the stack's own listener; a peer that
  reflects that SYN back (source = the gateway's own address) is dropped, so
  no relay loop can form.
All pass on main.
"""

from __future__ import annotations

import random

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from nbgateway.netstack.endpoints import TunnelClientEndpoint, TunnelServerEndpoint
from nbgateway.netstack.stack import Stack
from nbgateway.netstack.testing import PacketRecorder
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.mux import DeviceMux
from nbgateway.wireguard.testing import CollectingSink, MemoryNetwork, ipv4_packet

GW = ("192.0.2.100", 51820)
GW_TUN = "100.64.0.1"


def test_a_peer_of_one_account_cannot_claim_another_peers_or_accounts_address():
    clock = Clock()
    net = MemoryNetwork()
    mux = DeviceMux()
    net.attach(mux, GW)
    devices, sinks, clients = [], [], {}
    for acct in ("A", "B"):
        sink = CollectingSink()
        dev = mux.add(WireGuardDevice(generate_private_key(), clock, sink=sink,
                                      index_registry=mux.registry,
                                      rng=random.Random(len(devices))))
        devices.append(dev)
        sinks.append(sink)
        # both accounts number their peers alike: isolation is per device
        for n, ip in enumerate(("100.64.0.2", "100.64.0.3")):
            c = WireGuardDevice(generate_private_key(), clock, sink=CollectingSink())
            net.attach(c, (f"198.51.100.{10 * len(devices) + n}", 40000))
            c.add_peer(dev.public_key, allowed_ips=["0.0.0.0/0"], endpoint=GW)
            dev.add_peer(c.public_key, allowed_ips=[f"{ip}/32"])
            clients[(acct, ip)] = c
    (dev_a, dev_b), (sink_a, sink_b) = devices, sinks
    attacker = clients[("A", "100.64.0.2")]
    for spoofed in ("100.64.0.3", "100.64.0.9", GW_TUN, "10.0.0.1"):
        attacker.sendPacket(ipv4_packet(spoofed, GW_TUN, b"spoof " + spoofed.encode()))
    net.pump()
    assert sink_a.packets == [] and sink_b.packets == []
    assert dev_a.counters["drop_disallowed_source"] == 4
    assert dev_b.counters["drop_disallowed_source"] == 0
    attacker.sendPacket(ipv4_packet("100.64.0.2", GW_TUN, b"honest"))
    net.pump()
    assert [p for p, _ in sink_a.packets] == [ipv4_packet("100.64.0.2", GW_TUN, b"honest")]
    assert sink_b.packets == []
    # the sink is told which peer sent it: A's attacker, never B's 100.64.0.2
    assert sink_a.packets[0][1] == attacker.public_key


class _Accepted(Protocol):
    seen: list = []

    def connectionMade(self) -> None:
        _Accepted.seen.append(self)


def test_a_tunnel_dial_to_the_gateways_own_address_never_loops_back():
    clock = Clock()
    link = PacketRecorder()
    stack = Stack(link, clock, [GW_TUN])
    _Accepted.seen = []
    TunnelServerEndpoint(stack, 7000).listen(Factory.forProtocol(_Accepted))
    outcome = []
    d = TunnelClientEndpoint(stack, GW_TUN, 7000, timeout=5).connect(
        Factory.forProtocol(Protocol))
    d.addBoth(outcome.append)
    clock.advance(0.01)
    syns = link.take()
    assert syns and _Accepted.seen == []  # the SYN went to the link, not to the listener
    # a peer reflecting it back: source = the gateway's own address
    for pkt in syns:
        stack.packetReceived(pkt, b"\x07" * 32)
    clock.advance(0.01)
    assert _Accepted.seen == []
    clock.advance(10)
    assert _Accepted.seen == [] and outcome and not isinstance(outcome[0], Protocol)
