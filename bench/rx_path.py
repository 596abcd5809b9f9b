"""Receive data path in process: what a bulk upload costs the gateway per MiB,
old configuration vs new, measured in the same run (no namespaces, no root).

A stock peer's bulk TCP stream (MSS 1228, timestamps, as Linux sends through a
1280-MTU tunnel) is encrypted beforehand by a peer ``WireGuardDevice``; the
bench then times only the gateway side: ``datagramsReceived`` in reads of
``--batch`` (64, what ``udp.BatchingPort`` reads at most per event) ->
WireGuard decrypt -> ``Stack`` -> TCP -> an application that drops the bytes
(the gateway's ACKs are encrypted and discarded).  Four stack configurations,
interleaved (one slice of each per round, a fresh connection per slice):

* ``verify``/``coalesce`` both on or off: ``Stack(verify_checksums=...,
  coalesce=...)``; the old gateway verified every TCP checksum and handed
  every segment to TCP on its own (``verify+no-coalesce``); the account's
  stack now skips verification (WireGuard authenticated the packet) and
  coalesces in-order runs (``noverify+coalesce``).

Printed: MiB/s per configuration (median over rounds) and the ratio of each
to the old configuration from the same rounds.

Usage: python bench/rx_path.py [--mib 16] [--rounds 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time
from itertools import repeat

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from twisted.internet.task import Clock

from nbgateway.netstack.stack import Stack
from nbgateway.netstack.tcp_wire import ACK, SYN, parse_segment
from nbgateway.netstack.testing import build_tcp
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.udp import READ_BATCH

GW, PEER = "10.0.0.1", "10.0.0.2"
GW_ADDR, PEER_ADDR = ("127.0.0.1", 51820), ("127.0.0.1", 40000)
MSS = 1280 - 40 - 12
TS = b"\x01\x01\x08\x0a"
CONFIGS = (("verify+no-coalesce", True, False), ("noverify+no-coalesce", False, False),
           ("verify+coalesce", True, True), ("noverify+coalesce", False, True))


class _Collect:
    """A batch link keeping ``(datagram, source)`` pairs."""

    def __init__(self, src):
        self.src, self.out = src, []

    def sendDatagram(self, data, addr):
        self.out.append((data, self.src))

    def sendDatagrams(self, datagrams, addr):
        self.out.extend(zip(datagrams, repeat(self.src)))


class _Drop:
    def sendDatagram(self, data, addr):
        pass

    def sendDatagrams(self, datagrams, addr):
        pass


class _Sink:
    """The peer's netstack stand-in: keeps what the gateway sent."""

    def __init__(self):
        self.packets = []

    def packetReceived(self, packet, key):
        self.packets.append(packet)

    def packetsReceived(self, packets, key):
        self.packets.extend(packets)


class _App:
    """The application: counts and drops the bytes."""

    def __init__(self):
        self.n = 0

    def tcp_established(self):
        pass

    def tcp_data(self, data):
        self.n += len(data)

    def tcp_eof(self):
        pass

    def tcp_fin_acked(self):
        pass

    def tcp_writable(self):
        pass

    def tcp_closed(self, reason):
        pass


def _slice(verify: bool, coalesce: bool, nbytes: int, batch: int) -> float:
    """One fresh connection; returns the gateway's MiB/s for ``nbytes``."""
    clock = Clock()
    clock.advance(1000)
    gw = WireGuardDevice(generate_private_key(), clock)
    peer = WireGuardDevice(generate_private_key(), clock)
    stack = Stack(gw, clock, [GW], verify_checksums=verify, coalesce=coalesce)
    gw.sink = stack
    app = _App()
    conns = []
    stack.tcp.listen(80, lambda c: conns.append(c) or app)
    peer.sink = sink = _Sink()
    gw.add_peer(peer.public_key, allowed_ips=[f"{PEER}/32"], endpoint=PEER_ADDR)
    peer.add_peer(gw.public_key, allowed_ips=[f"{GW}/32"], endpoint=GW_ADDR)
    to_gw, to_peer = _Collect(PEER_ADDR), _Collect(GW_ADDR)
    peer.link, gw.link = to_gw, to_peer

    def exchange():
        while to_gw.out or to_peer.out:
            a, to_gw.out = to_gw.out, []
            gw.datagramsReceived(a)
            b, to_peer.out = to_peer.out, []
            peer.datagramsReceived(b)

    seq = 5000
    syn_opts = struct.pack("!BBH", 2, 4, MSS) + b"\x01\x03\x03\x07" + TS + struct.pack(
        "!II", 1, 0)
    peer.sendPacket(build_tcp(PEER, GW, 40000, 80, seq=seq - 1, flags=SYN, options=syn_opts))
    exchange()  # handshake, SYN, SYN-ACK
    synack = parse_segment(memoryview(sink.packets[-1])[20:])
    ack = synack.seq + 1
    tsecr = synack.ts_val

    def seg(payload: bytes, s: int, tsval: int, flags: int = ACK) -> bytes:
        opts = TS + struct.pack("!II", tsval, tsecr)
        return build_tcp(PEER, GW, 40000, 80, seq=s, ack=ack, flags=flags, options=opts,
                         payload=payload, window=65535)

    peer.sendPacket(seg(b"", seq, 2))
    exchange()
    [conn] = conns
    conn.rcv_adv = conn.rcv_nxt + (1 << 40)  # the application keeps up: no window limit
    payload = os.urandom(MSS)
    reads = []
    for i in range(nbytes // (MSS * batch)):
        pkts = [seg(payload, seq + j * MSS, 3 + i) for j in range(batch)]
        seq += batch * MSS
        peer.sendPackets(pkts)
        reads.append(to_gw.out)
        to_gw.out = []
    gw.link = _Drop()
    receive = gw.datagramsReceived
    t0 = time.perf_counter()
    for read in reads:
        receive(read)
    dt = time.perf_counter() - t0
    got = len(reads) * batch * MSS
    assert app.n == got, (app.n, got, stack.counters)
    return got / dt / (1 << 20)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=16, help="bytes per slice (MiB)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=READ_BATCH)
    args = p.parse_args(argv)
    rates: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    ratios: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    for _ in range(args.rounds):
        this = {name: _slice(v, c, args.mib << 20, args.batch) for name, v, c in CONFIGS}
        for name in this:
            rates[name].append(this[name])
            ratios[name].append(this[name] / this[CONFIGS[0][0]])
    print(f"receive path, bulk TCP through WireGuard into the netstack, reads of "
          f"{args.batch}, {args.mib} MiB per slice, medians of {args.rounds} interleaved rounds:")
    for name, _, _ in CONFIGS:
        print(f"  {name:<22} {statistics.median(rates[name]):7.1f} MiB/s   "
              f"x{statistics.median(ratios[name]):.2f} of verify+no-coalesce (the old path)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
