"""The gateway side of the netstack TCP interop tests and ``bench/netstack.py``.

:func:`start_gateway` builds the in-process gateway (``WireGuardDevice`` feeding a
netstack ``Stack`` on 100.64.0.1 / fd00:64::1, its UDP socket inside the test's
namespace) and a wireguard-go peer (100.64.0.2 / fd00:64::2) in the same namespace,
MTU 1280 on both sides like NetBird.  :class:`FaultInjector` is the test-only fault
hook: it wraps the stack as the device's packet sink and the device as the stack's
packet sender and drops, reorders and duplicates packets with a seeded RNG.
:class:`Pump` streams the deterministic test stream (see ``netstack_kernel_peer``)
with push-producer backpressure and hashes what it receives, never holding a
whole transfer in memory.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, interfaces
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from nbgateway.interfaces import IPacketSender, IPacketSink
from nbgateway.netstack.stack import Stack
from nbgateway.wireguard import udp
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from tests.interop.netstack_kernel_peer import stream_chunks
from tests.interop.testbed import Netns, Testbed, WgGo, free_udp_port, inside_netns

GW4, GW6, P4, P6 = "100.64.0.1", "fd00:64::1", "100.64.0.2", "fd00:64::2"
MTU = 1280
KERNEL_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netstack_kernel_peer.py")


def kernel_peer_args(*args: Any) -> list[str]:
    """argv running the kernel-side helper (inside a namespace via ``Netns.run``)."""
    return [sys.executable, KERNEL_PEER, *map(str, args)]


class FaultInjector:
    """Drops, reorders (delays by 1-4 ms) and duplicates packets, each with
    probability ``rate``, chosen by ``random.Random(seed)``.  Delayed and
    duplicate copies are delivered through ``clock.callLater``."""

    def __init__(self, clock: Any, rate: float = 0.02, seed: int = 3,
                 reorder_delay: tuple[float, float] = (0.001, 0.004)) -> None:
        self.clock = clock
        self.rate = rate
        self.reorder_delay = reorder_delay
        self.rng = random.Random(seed)
        self.counters: Counter[str] = Counter()
        self.pending: set[Any] = set()

    def _later(self, delay: float, deliver: Any, packet: bytes) -> None:
        call: Any = None

        def fire() -> None:
            self.pending.discard(call)
            deliver(packet)

        call = self.clock.callLater(delay, fire)
        self.pending.add(call)

    def apply(self, packet: bytes, deliver: Any) -> None:
        r = self.rng.random()
        self.counters["packets"] += 1
        if r < self.rate:
            self.counters["dropped"] += 1
        elif r < 2 * self.rate:
            self.counters["reordered"] += 1
            lo, hi = self.reorder_delay
            self._later(lo + (hi - lo) * self.rng.random(), deliver, bytes(packet))
        elif r < 3 * self.rate:
            self.counters["duplicated"] += 1
            deliver(packet)
            self._later(0.0005, deliver, bytes(packet))
        else:
            deliver(packet)

    def close(self) -> None:
        for call in list(self.pending):
            if call.active():
                call.cancel()
        self.pending.clear()


@implementer(IPacketSink)
class FaultySink:
    """The stack, as the device's sink, behind a :class:`FaultInjector`."""

    def __init__(self, faults: FaultInjector, sink: Any) -> None:
        self.faults = faults
        self.sink = sink

    def packetReceived(self, packet: bytes, peer_key: bytes) -> None:
        self.faults.apply(packet, lambda p: self.sink.packetReceived(p, peer_key))


@implementer(IPacketSender)
class FaultySender:
    """The device, as the stack's sender, behind a :class:`FaultInjector`."""

    def __init__(self, faults: FaultInjector, sender: Any) -> None:
        self.faults = faults
        self.sender = sender

    @property
    def mtu(self) -> int:
        return self.sender.mtu

    def sendPacket(self, packet: bytes) -> bool:
        self.faults.apply(packet, self.sender.sendPacket)
        return True

    def sendPackets(self, packets: list[bytes]) -> int:
        for packet in packets:
            self.sendPacket(packet)
        return len(packets)


@dataclass
class Gateway:
    ns: Netns
    dev: WireGuardDevice
    stack: Stack
    wg: WgGo
    port: Any
    faults: FaultInjector | None

    def close(self) -> defer.Deferred[None]:
        """Stop the stack and device; the returned Deferred fires once the UDP
        port stopped listening (call from the reactor thread)."""
        if self.faults is not None:
            self.faults.close()
        self.stack.close()
        self.dev.close()
        return defer.maybeDeferred(self.port.stopListening)


def start_gateway(testbed: Testbed, reactor: Any, *, faults: FaultInjector | None = None,
                  peer_allowed: tuple[str, ...] = (f"{P4}/32", f"{P6}/128")) -> Gateway:
    """Gateway + wireguard-go peer in a fresh namespace of ``testbed``.

    ``peer_allowed`` is the peer's allowed-ips on the gateway side (what source
    addresses the device accepts from it)."""
    ns = testbed.netns()
    dev = WireGuardDevice(generate_private_key(), reactor)
    sender: Any = dev if faults is None else FaultySender(faults, dev)
    stack = Stack(sender, reactor, [GW4, GW6], mtu=MTU)
    dev.sink = stack if faults is None else FaultySink(faults, stack)
    with inside_netns(ns.name):
        port = udp.listen(reactor, dev, 0, interface="127.0.0.1")
    wg_port = free_udp_port(ns)
    wg = testbed.wireguard_go(ns, listen_port=wg_port, addresses=[f"{P4}/32", f"{P6}/128"],
                              mtu=MTU)
    for cidr in (f"{GW4}/32", f"{GW6}/128"):
        ns.add_route(wg.ifname, cidr)
    wg.add_peer(dev.public_key, allowed_ips=[f"{GW4}/32", f"{GW6}/128"],
                endpoint=f"127.0.0.1:{port.getHost().port}")
    dev.add_peer(wg.keys.public, allowed_ips=list(peer_allowed),
                 endpoint=("127.0.0.1", wg_port))
    return Gateway(ns, dev, stack, wg, port, faults)


@implementer(interfaces.IHalfCloseableProtocol, interfaces.IPushProducer)
class Pump(Protocol):
    """Sends ``nbytes`` of the deterministic stream ``seed`` (push producer,
    paused by the transport's send buffer), then half-closes; hashes what it
    receives.  With ``reply_digest`` it answers the peer's EOF with
    ``<sha256> <n>`` and half-closes.  ``done`` fires with the protocol on
    connectionLost."""

    def __init__(self, nbytes: int = 0, seed: str = "", reply_digest: bool = False) -> None:
        self.nbytes = nbytes
        self.seed = seed
        self.reply_digest = reply_digest
        self.chunks = stream_chunks(nbytes, seed)
        self.sent_hash = hashlib.sha256()
        self.sent = 0
        self.recv_hash = hashlib.sha256()
        self.received = 0
        self.paused = False
        self.producing = False
        self.finished_sending = nbytes == 0
        self.eof = False
        self.reason: Any = None
        self.done: defer.Deferred[Pump] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.nbytes:
            self.transport.registerProducer(self, True)
            self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.producing or self.finished_sending:
            return
        self.producing = True
        try:
            while not self.paused:
                chunk = next(self.chunks, None)
                if chunk is None:
                    self.finished_sending = True
                    self.transport.unregisterProducer()
                    self.transport.loseWriteConnection()
                    return
                self.sent_hash.update(chunk)
                self.sent += len(chunk)
                self.transport.write(chunk)
        finally:
            self.producing = False

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True
        self.finished_sending = True

    def dataReceived(self, data: bytes) -> None:
        self.recv_hash.update(data)
        self.received += len(data)

    def readConnectionLost(self) -> None:
        self.eof = True
        if self.reply_digest:
            self.transport.write(f"{self.recv_hash.hexdigest()} {self.received}\n".encode())
            self.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason
        if not self.done.called:
            self.done.callback(self)


class PumpFactory(Factory):
    """Builds :class:`Pump` protocols with fixed arguments; keeps them in ``built``."""

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.built: list[Pump] = []

    def buildProtocol(self, addr: Any) -> Pump:
        p = Pump(**self.kw)
        p.factory = self
        self.built.append(p)
        return p
