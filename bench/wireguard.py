"""WireGuard core benchmark: responder handshakes/s and transport packets/s.

Each figure is printed beside a comparison measured in the same run:
- handshakes/s beside the bare X25519 rate (a responder does 4 scalar
  multiplications per handshake, so 1/4 of the X25519 rate is the ceiling);
- transport packets/s (one encrypt in device A + one decrypt in device B) beside
  the bare AEAD rate for one encrypt + one decrypt of the same size with the same
  binding, two ways:
  * batched, as the gateway runs: the netstack hands A a flush of packets
    (``sendPackets``), the datagrams A emits reach B as one socket read
    (``datagramsReceived``, what ``udp.BatchingPort`` delivers) and B hands the
    run to its sink (``packetsReceived``); ``--batch`` packets per flush
    (default ``udp.READ_BATCH``, the most the UDP adapter reads per event);
  * one at a time: ``sendPacket`` -> datagram -> ``datagramReceived`` ->
    ``packetReceived``.
  The clock is the production one (the reactor's ``seconds``; the reactor is
  never run).

The machine is shared and noisy, so each comparison is measured in
interleaved slices (core, bare, core, bare, ...) and the median of the
per-slice ratios is reported with the median rates.

Usage: python bench/wireguard.py [--seconds 2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from itertools import repeat

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_scalarmult
from twisted.internet.task import Clock
from zope.interface import implementer

from nbgateway.interfaces import IDatagramBatchLink, IPacketBatchSink
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key, public_key
from nbgateway.wireguard.testing import ipv4_packet
from nbgateway.wireguard.udp import READ_BATCH


def rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` (called in batches) over about ``seconds``."""
    n, batch = 0, 64
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


class _Capture:
    def __init__(self):
        self.last = None

    def sendDatagram(self, data, addr):
        self.last = data


@implementer(IDatagramBatchLink)
class _Direct:
    """Each datagram straight into the other device, one "read" per datagram
    (a batch link, as the production UDP adapter is)."""

    def __init__(self, target, src):
        self.target, self.src = target, src

    def sendDatagram(self, data, addr):
        self.target.datagramReceived(data, self.src)

    def sendDatagrams(self, datagrams, addr):
        for data in datagrams:
            self.target.datagramReceived(data, self.src)


@implementer(IDatagramBatchLink)
class _Collect:
    """A link that keeps datagrams until the bench hands them over as one read
    (``(datagram, source)`` pairs, as ``recvfrom`` returns them)."""

    def __init__(self, src):
        self.src = src
        self.out = []

    def sendDatagram(self, data, addr):
        self.out.append((data, self.src))

    def sendDatagrams(self, datagrams, addr):
        self.out.extend(zip(datagrams, repeat(self.src)))


@implementer(IPacketBatchSink)
class _BatchCount:
    n = 0

    def packetReceived(self, packet, key):
        self.n += 1

    def packetsReceived(self, packets, key):
        self.n += len(packets)


def bench_handshakes(seconds: float) -> tuple[float, float]:
    clock = Clock()
    responder = WireGuardDevice(generate_private_key(), clock, under_load_threshold=10**9)
    responder.link = _Capture()
    n_peers = 64
    initiators = []
    for i in range(n_peers):
        dev = WireGuardDevice(generate_private_key(), clock)
        dev.link = _Capture()
        dev.add_peer(responder.public_key, endpoint=("127.0.0.1", 1))
        responder.add_peer(dev.public_key, allowed_ips=[f"10.1.{i // 250}.{i % 250}/32"])
        initiators.append(dev)
    rounds = max(8, int(seconds * 4000 / n_peers))
    msgs = []
    for _ in range(rounds):
        for dev in initiators:
            dev.peers[responder.public_key].last_initiation_sent = None
            dev.initiate(responder.public_key)
            msgs.append(dev.link.last)
    start = time.perf_counter()
    for r in range(rounds):
        clock.advance(0.06)  # per-peer initiation rate limit is 50 ms
        base = r * n_peers
        for j in range(n_peers):
            responder.datagramReceived(msgs[base + j], ("127.0.0.1", 2))
    elapsed = time.perf_counter() - start
    done = responder.counters["handshake_response_tx"]
    assert done == rounds * n_peers, responder.counters
    a, b = generate_private_key(), public_key(generate_private_key())
    x25519 = rate(lambda: crypto_scalarmult(a, b), seconds / 2)
    return done / elapsed, x25519


def interleaved(a, b, seconds: float, rounds: int) -> tuple[float, float, float]:
    """Median rate of ``a``, of ``b`` and of the per-round ratio a/b."""
    ra, rb, ratios = [], [], []
    for _ in range(rounds):
        x = rate(a, seconds / (2 * rounds))
        y = rate(b, seconds / (2 * rounds))
        ra.append(x)
        rb.append(y)
        ratios.append(x / y)
    return statistics.median(ra), statistics.median(rb), statistics.median(ratios)


def _pair(sink) -> tuple[WireGuardDevice, WireGuardDevice]:
    # the production clock (reactor.seconds, a C builtin); the reactor is never run
    from twisted.internet import reactor as clock

    a = WireGuardDevice(generate_private_key(), clock)
    b = WireGuardDevice(generate_private_key(), clock)
    b.sink = sink
    a.link = _Direct(b, ("127.0.0.1", 1))
    b.link = _Direct(a, ("127.0.0.1", 2))
    a.add_peer(b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=("127.0.0.1", 2))
    b.add_peer(a.public_key, allowed_ips=["10.0.0.1/32"], endpoint=("127.0.0.1", 1))
    return a, b


def bench_transport(
    size: int, seconds: float, rounds: int, batch: int
) -> tuple[float, float, float]:
    """(core pkt/s, bare enc+dec/s, median ratio); ``batch`` 1 = one at a time."""
    sink = _BatchCount()  # a batch sink, as the netstack is
    a, b = _pair(sink)
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2", os.urandom(size - 20))
    a.sendPacket(pkt)  # handshake
    assert sink.n == 1
    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = bytes(12)
    padded = pkt + bytes(-len(pkt) % 16)

    def bare():
        aead.decrypt(nonce, aead.encrypt(nonce, padded, None), None)

    if batch > 1:
        link = a.link = _Collect(("127.0.0.1", 1))
        flush = [pkt] * batch
        send, receive = a.sendPackets, b.datagramsReceived

        def core():
            send(flush)
            receive(link.out)
            link.out = []

        c, base, ratio = interleaved(core, lambda: [bare() for _ in flush], seconds, rounds)
        c, base = c * batch, base * batch
    else:
        send = a.sendPacket
        c, base, ratio = interleaved(lambda: send(pkt), bare, seconds, rounds)
    events = b.counters
    assert events["drop_replay"] == 0 and events["drop_decrypt"] == 0, events
    assert sink.n == events["data_rx"] == a.counters["data_tx"], (sink.n, events)
    return c, base, ratio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=READ_BATCH,
                    help="packets per flush/read (default: what the UDP adapter reads at most "
                         "per event, udp.READ_BATCH)")
    args = ap.parse_args()
    hs, x = bench_handshakes(args.seconds)
    print(f"responder handshakes/s: {hs:,.0f}   bare X25519/s: {x:,.0f}   "
          f"ratio vs X25519/4 ceiling: {hs / (x / 4):.2f}   (target >= 3,000/s)")
    for batch in (args.batch, 1):
        how = f"batches of {batch}" if batch > 1 else "one at a time"
        for size in (64, 1420):
            core, bare, ratio = bench_transport(size, args.seconds, args.rounds, batch)
            mbit = core * size * 8 / 1e6
            print(f"transport {size:>4} B, {how}: {core:,.0f} pkt/s ({mbit:,.0f} Mbit/s)   "
                  f"bare AEAD enc+dec: {bare:,.0f}/s   median ratio: {ratio:.2f}"
                  f"   (target >= 0.60)")


if __name__ == "__main__":
    main()
