"""In-memory test helpers for the netstack (usable by every test suite).

* :class:`MemoryLink` joins two packet sinks (normally two :class:`Stack`
  objects) through an injected clock, with a seeded fault model (drop,
  reorder, duplicate, corrupt).  Delivery is driven by one re-armed
  ``IDelayedCall`` over a heap, so thousands of packets in flight stay cheap
  on ``task.Clock``.
* :class:`PacketRecorder` is an ``IPacketSender`` that just keeps packets.
* :func:`make_stack_pair` builds two stacks over a link.
* ``build_*`` / :func:`fragment_ipv4`: tiny packet builders for tests.
* :func:`snd_wire` / :func:`rcv_wire`: a TCB's relative sequence numbers as
  the wire values a test sees in segments.
"""

from __future__ import annotations

import heapq
import ipaddress
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from zope.interface import implementer

from nbgateway.interfaces import IPacketSender
from nbgateway.netstack import wire
from nbgateway.netstack.checksum import fold, ones_sum, pseudo_sum_packed

AddrLike = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address


# ------------------------------------------------------------------ senders


@implementer(IPacketSender)
class PacketRecorder:
    """An ``IPacketSender`` that records every packet it is given."""

    def __init__(self, mtu: int = 1280, accept: bool = True) -> None:
        self.mtu = mtu
        self.accept = accept
        self.packets: list[bytes] = []

    def sendPacket(self, packet: bytes) -> bool:
        self.packets.append(bytes(packet))
        return self.accept

    def sendPackets(self, packets: list[bytes]) -> int:
        return sum(self.sendPacket(p) for p in packets)

    def take(self) -> list[bytes]:
        """Return and forget the recorded packets."""
        out, self.packets = self.packets, []
        return out


@implementer(IPacketSender)
class LinkEnd:
    """One side of a :class:`MemoryLink`: send here, arrive at the other end's
    ``sink``.  ``key`` is passed as ``peer_key`` to the receiving sink."""

    def __init__(self, link: MemoryLink, name: str, key: bytes, mtu: int) -> None:
        self.link = link
        self.name = name
        self.key = key
        self.mtu = mtu
        self.sink: Any = None
        self.peer: LinkEnd | None = None
        self.sent = 0

    def sendPacket(self, packet: bytes) -> bool:
        return self.link._send(self, packet)

    def sendPackets(self, packets: list[bytes]) -> int:
        return sum(self.link._send(self, p) for p in packets)


class MemoryLink:
    """A point-to-point in-memory packet link with a seeded fault model.

    ``link.a`` and ``link.b`` are ``IPacketSender`` ends (``mtu`` attribute);
    set ``end.sink`` (or use :meth:`attach`) to the ``IPacketSink`` on that
    side.  A packet sent on ``a`` reaches ``b.sink.packetReceived(packet,
    a.key)`` after ``latency`` seconds of clock time.  Faults, each an
    independent probability per packet from ``random.Random(seed)``:

    * ``drop``: the packet vanishes;
    * ``duplicate``: a second copy arrives ``jitter`` later;
    * ``reorder``: the packet gets an extra uniform delay in ``(0, jitter]``
      so later packets can overtake it;
    * ``corrupt``: one random byte is flipped (checksums must catch it).

    ``fault(end_name, index, packet)``, if set, scripts faults instead of the
    dice for the packets it decides: it returns None (use the probabilities),
    ``"pass"``, ``"drop"``, ``"duplicate"``, ``"delay"`` (reorder by
    ``jitter``) or ``"corrupt"``; ``index`` counts packets sent on that end
    from 0 (hypothesis can drive it with a drawn list).

    Packets larger than the end's ``mtu`` are refused (``sendPacket`` returns
    False).  ``tap(end_name, packet)`` if set sees every packet as sent.
    ``counters`` counts sent / delivered / dropped / duplicated / reordered /
    corrupted / oversize.  Set ``up = False`` to black-hole traffic.
    """

    def __init__(
        self, clock: Any, *, mtu: int = 1280, latency: float = 0.001, jitter: float = 0.005,
        drop: float = 0.0, reorder: float = 0.0, duplicate: float = 0.0, corrupt: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.clock = clock
        self.latency = latency
        self.jitter = jitter
        self.drop = drop
        self.reorder = reorder
        self.duplicate = duplicate
        self.corrupt = corrupt
        self.random = random.Random(seed)
        self.up = True
        self.tap: Callable[[str, bytes], None] | None = None
        self.fault: Callable[[str, int, bytes], str | None] | None = None
        self.counters: Counter[str] = Counter()
        self.a = LinkEnd(self, "a", b"\xaa" * 32, mtu)
        self.b = LinkEnd(self, "b", b"\xbb" * 32, mtu)
        self.a.peer, self.b.peer = self.b, self.a
        self._queue: list[tuple[float, int, LinkEnd, bytes]] = []
        self._seq = 0
        self._call: Any = None
        self._armed_at: float | None = None

    def attach(self, sink_a: Any, sink_b: Any) -> None:
        self.a.sink, self.b.sink = sink_a, sink_b

    def _send(self, src: LinkEnd, packet: bytes) -> bool:
        packet = bytes(packet)
        if self.tap is not None:
            self.tap(src.name, packet)
        if len(packet) > src.mtu:
            self.counters["oversize"] += 1
            return False
        self.counters["sent"] += 1
        index = src.sent
        src.sent += 1
        if not self.up:
            self.counters["dropped"] += 1
            return True
        rnd = self.random.random
        verdict = self.fault(src.name, index, packet) if self.fault is not None else None
        if verdict is not None:
            return self._scripted(src, packet, verdict)
        if self.drop and rnd() < self.drop:
            self.counters["dropped"] += 1
            return True
        if self.corrupt and packet and rnd() < self.corrupt:
            i = self.random.randrange(len(packet))
            packet = packet[:i] + bytes((packet[i] ^ (1 << self.random.randrange(8)),)) + (
                packet[i + 1 :]
            )
            self.counters["corrupted"] += 1
        now = self.clock.seconds()
        at = now + self.latency
        if self.reorder and rnd() < self.reorder:
            at += self.random.uniform(0, self.jitter) or self.jitter
            self.counters["reordered"] += 1
        assert src.peer is not None
        self._push(at, src.peer, packet)
        if self.duplicate and rnd() < self.duplicate:
            self._push(at + self.jitter * rnd(), src.peer, packet)
            self.counters["duplicated"] += 1
        self._arm()
        return True

    def _scripted(self, src: LinkEnd, packet: bytes, verdict: str) -> bool:
        at = self.clock.seconds() + self.latency
        assert src.peer is not None
        if verdict == "drop":
            self.counters["dropped"] += 1
            return True
        if verdict == "corrupt" and packet:
            packet = packet[:-1] + bytes((packet[-1] ^ 0x01,))  # checksums must catch it
            self.counters["corrupted"] += 1
        elif verdict == "delay":
            at += self.jitter
            self.counters["reordered"] += 1
        elif verdict == "duplicate":
            self._push(at + self.jitter / 2, src.peer, packet)
            self.counters["duplicated"] += 1
        elif verdict != "pass":
            raise ValueError(f"unknown fault verdict {verdict!r}")
        self._push(at, src.peer, packet)
        self._arm()
        return True

    def _push(self, at: float, dst: LinkEnd, packet: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, dst, packet))

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def _arm(self) -> None:
        if not self._queue:
            return
        at = self._queue[0][0]
        if self._call is not None and self._call.active():
            if self._armed_at is not None and self._armed_at <= at:
                return
            self._call.cancel()
        self._armed_at = at
        self._call = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._deliver)

    def _deliver(self) -> None:
        self._call = None
        self._armed_at = None
        now = self.clock.seconds()
        q = self._queue
        while q and q[0][0] <= now:
            _at, _seq, dst, packet = heapq.heappop(q)
            assert dst.peer is not None
            if dst.sink is not None:
                self.counters["delivered"] += 1
                dst.sink.packetReceived(packet, dst.peer.key)
        self._arm()

    def close(self) -> None:
        """Forget queued packets and cancel the delivery call."""
        self._queue.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class StubTCP:
    """A stand-in for the TCP layer with the seam the Stack uses
    (``segment_received``, ``next_deadline``, ``on_deadline``,
    ``icmp_error``): records what it is handed; tests set ``deadline``."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.segments: list[tuple[Any, Any, bytes, float]] = []
        self.deadline: float | None = None
        self.fired: list[float] = []
        self.icmp_errors: list[tuple[Any, ...]] = []
        self.raise_on_segment = False

    def segment_received(self, src: Any, dst: Any, segment: Any, now: float) -> None:
        if self.raise_on_segment:
            raise RuntimeError("StubTCP told to raise")
        self.segments.append((src, dst, bytes(segment), now))

    def next_deadline(self) -> float | None:
        return self.deadline

    def on_deadline(self, now: float) -> None:
        self.fired.append(now)
        if self.deadline is not None and self.deadline <= now:
            self.deadline = None

    def icmp_error(
        self, local: Any, remote: Any, quoted: bytes, kind: str, mtu: int | None, now: float,
    ) -> None:
        self.icmp_errors.append((local, remote, bytes(quoted[:4]), kind, mtu))


def make_stack_pair(
    clock: Any,
    addresses_a: Iterable[AddrLike] = ("100.64.0.1", "fd00::1"),
    addresses_b: Iterable[AddrLike] = ("100.64.0.2", "fd00::2"),
    *, mtu: int = 1280, tcp_factory: Any = None, stack_kwargs: dict[str, Any] | None = None,
    **link_kwargs: Any,
) -> tuple[Any, Any, MemoryLink]:
    """Two :class:`~nbgateway.netstack.stack.Stack` objects joined by a
    :class:`MemoryLink` (fault model from ``link_kwargs``, extra Stack
    keyword arguments from ``stack_kwargs``).  Returns ``(a, b, link)``."""
    from nbgateway.netstack.stack import Stack

    link = MemoryLink(clock, mtu=mtu, **link_kwargs)
    kw = dict(stack_kwargs or {})
    if tcp_factory is not None:
        kw["tcp_factory"] = tcp_factory
    a = Stack(link.a, clock, addresses_a, mtu=mtu, **kw)
    b = Stack(link.b, clock, addresses_b, mtu=mtu, **kw)
    link.attach(a, b)
    return a, b, link


def advance(clock: Any, seconds: float, step: float = 0.001) -> None:
    """Advance ``clock`` by ``seconds`` in steps (so timers run in order)."""
    end = clock.seconds() + seconds
    while clock.seconds() < end:
        clock.advance(min(step, end - clock.seconds()))


def run_until(clock: Any, predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Jump ``clock`` from one scheduled call to the next until ``predicate()``
    holds (True) or nothing is scheduled / ``timeout`` clock seconds passed
    (False).  Exact timer order, no fixed step."""
    end = clock.seconds() + timeout
    while not predicate():
        calls = clock.getDelayedCalls()
        if not calls:
            return False
        t = min(c.getTime() for c in calls)
        if t > end:
            clock.advance(max(0.0, end - clock.seconds()))
            return predicate()
        clock.advance(max(0.0, t - clock.seconds()))
    return True


# ----------------------------------------------------------------- builders


def packed(a: AddrLike) -> bytes:
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        a = ipaddress.ip_address(a)
    return a.packed


def build_ipv4(
    src: AddrLike, dst: AddrLike, protocol: int, payload: bytes, *, ttl: int = 64,
    ident: int = 0, flags_frag: int = wire.IP4_DF, options: bytes = b"",
    bad_checksum: bool = False,
) -> bytes:
    """An IPv4 packet; ``options`` is padded to a multiple of 4."""
    options += b"\x00" * (-len(options) % 4)
    hl = 20 + len(options)
    hdr = bytearray(struct.pack(
        "!BBHHHBBH4s4s", 0x40 | (hl >> 2), 0, hl + len(payload), ident & 0xFFFF, flags_frag,
        ttl, protocol, 0, packed(src), packed(dst),
    )) + options
    ck = fold(ones_sum(hdr))
    if bad_checksum:
        ck ^= 0x5A5A
    hdr[10:12] = ck.to_bytes(2, "big")
    return bytes(hdr) + bytes(payload)


def build_ipv6(
    src: AddrLike, dst: AddrLike, next_header: int, payload: bytes, *, hop_limit: int = 64,
) -> bytes:
    """An IPv6 packet; ``payload`` may start with extension headers whose
    chain begins with ``next_header``."""
    return wire.emit_ipv6_header(
        packed(src), packed(dst), next_header, len(payload), hop_limit=hop_limit,
    ) + bytes(payload)


def build_ip(src: AddrLike, dst: AddrLike, protocol: int, payload: bytes, **kw: Any) -> bytes:
    if len(packed(src)) == 4:
        return build_ipv4(src, dst, protocol, payload, **kw)
    return build_ipv6(src, dst, protocol, payload, **kw)


def build_udp(
    src: AddrLike, dst: AddrLike, sport: int, dport: int, payload: bytes = b"", *,
    zero_checksum: bool = False, **kw: Any,
) -> bytes:
    seg = wire.emit_udp(packed(src), packed(dst), sport, dport, payload)
    if zero_checksum:
        seg[6:8] = b"\x00\x00"
    return build_ip(src, dst, wire.PROTO_UDP, bytes(seg), **kw)


def build_icmp_echo(
    src: AddrLike, dst: AddrLike, ident: int, seq: int, data: bytes = b"", *,
    reply: bool = False, **kw: Any,
) -> bytes:
    s, d = packed(src), packed(dst)
    rest = struct.pack("!HH", ident, seq)
    if len(s) == 4:
        t = wire.ICMP4_ECHO_REPLY if reply else wire.ICMP4_ECHO_REQUEST
        return build_ipv4(s, d, wire.PROTO_ICMP, wire.emit_icmpv4(t, 0, rest, data), **kw)
    t = wire.ICMP6_ECHO_REPLY if reply else wire.ICMP6_ECHO_REQUEST
    return build_ipv6(s, d, wire.PROTO_ICMPV6, wire.emit_icmpv6(s, d, t, 0, rest, data), **kw)


TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def build_tcp_segment(
    src: AddrLike, dst: AddrLike, sport: int, dport: int, *, seq: int = 0, ack: int = 0,
    flags: int = TCP_SYN, window: int = 65535, options: bytes = b"", payload: bytes = b"",
) -> bytes:
    """A TCP segment (header + payload) with a correct checksum (tests only;
    TCP parsing lives in ``tcp.py``)."""
    options += b"\x00" * (-len(options) % 4)
    off = (20 + len(options)) >> 2
    seg = bytearray(struct.pack(
        "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, flags,
        window, 0, 0,
    )) + options + payload
    ck = fold(ones_sum(seg, pseudo_sum_packed(packed(src), packed(dst), wire.PROTO_TCP, len(seg))))
    seg[16:18] = ck.to_bytes(2, "big")
    return bytes(seg)


def build_tcp(src: AddrLike, dst: AddrLike, sport: int, dport: int, **kw: Any) -> bytes:
    ip_kw = {k: kw.pop(k) for k in ("ttl", "ident", "hop_limit") if k in kw}
    seg = build_tcp_segment(src, dst, sport, dport, **kw)
    return build_ip(src, dst, wire.PROTO_TCP, seg, **ip_kw)


def fragment_ipv4(packet: bytes, size: int) -> list[bytes]:
    """Split an IPv4 packet (no options) into fragments carrying at most
    ``size`` payload bytes each (rounded down to a multiple of 8)."""
    hl, total, ident, ff, ttl, proto, src, dst = wire.ipv4_parse(packet)
    payload = packet[hl:total]
    size -= size % 8
    out = []
    base = (ff & wire.IP4_OFFSET_MASK) << 3
    for off in range(0, len(payload), size):
        chunk = payload[off : off + size]
        more = off + size < len(payload) or bool(ff & wire.IP4_MF)
        field = ((base + off) >> 3) | (wire.IP4_MF if more else 0)
        out.append(build_ipv4(src, dst, proto, chunk, ttl=ttl, ident=ident, flags_frag=field))
    return out


def build_ipv6_fragments(
    src: AddrLike, dst: AddrLike, protocol: int, upper: bytes, size: int, ident: int = 1,
) -> list[bytes]:
    """Fragment an upper-layer payload into IPv6 packets with Fragment headers."""
    size -= size % 8
    out = []
    for off in range(0, len(upper), size):
        chunk = upper[off : off + size]
        more = off + size < len(upper)
        fh = struct.pack("!BBHI", protocol, 0, off | int(more), ident)
        out.append(build_ipv6(src, dst, wire.PROTO_FRAGMENT, fh + chunk))
    return out


__all__ = [
    "LinkEnd", "MemoryLink", "PacketRecorder", "StubTCP", "advance", "build_icmp_echo", "build_ip",
    "build_ipv4", "build_ipv6", "build_ipv6_fragments", "build_tcp", "build_tcp_segment",
    "build_udp", "fragment_ipv4", "make_stack_pair", "packed", "run_until",
]


# ------------------------------------------------------------------ TCB numbers


def snd_wire(conn: Any, value: int) -> int:
    """The wire value of a send-side sequence number of ``conn`` (relative to
    its ISS: SND.UNA, SND.NXT, SND.MAX, ...)."""
    return (value + conn.iss) & 0xFFFFFFFF


def rcv_wire(conn: Any, value: int) -> int:
    """The wire value of a receive-side sequence number of ``conn`` (relative
    to its IRS: RCV.NXT, RCV.ADV, ...)."""
    return (value + conn.irs) & 0xFFFFFFFF
