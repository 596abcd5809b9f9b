"""Test doubles for the TCP layer: a fake stack with the seam the real Stack
provides, an in-memory wire between two fake stacks with a scripted fault
hook, and a recording TCPUser."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable

from twisted.internet.task import Clock

from nbgateway.netstack.tcp import TCPLayer
from nbgateway.netstack.tcp_wire import Segment, parse_segment

A4 = ipaddress.IPv4Address("100.64.0.1")
B4 = ipaddress.IPv4Address("100.64.0.2")
A6 = ipaddress.IPv6Address("fd00::1")
B6 = ipaddress.IPv6Address("fd00::2")


class FakeStack:
    def __init__(self, clock: Clock, addresses, mtu: int = 1280,
                 secret: bytes = b"k" * 32) -> None:
        self.clock = clock
        self.addresses = list(addresses)
        self.mtu = mtu
        self.counters: Counter[str] = Counter()
        self.sent: list[tuple] = []
        self.wakeups = 0
        self.corks = 0
        self.tcp = TCPLayer(self, secret=secret)

    def send_transport(self, src, dst, proto, segment) -> bool:
        assert proto == 6
        assert isinstance(segment, bytearray)
        assert segment[16:18] == b"\x00\x00"
        if type(src) is bytes:  # raw addresses (the IIPLayer form) -> objects for the wire
            src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        self.sent.append((src, dst, bytes(segment)))
        return True

    def wakeup(self) -> None:
        self.wakeups += 1

    # the TCP layer corks the stack around an output run; this fake sends at once
    def cork(self) -> None:
        self.corks += 1

    def uncork(self) -> None:
        self.corks -= 1

    def take(self) -> list[Segment]:
        """Parsed segments sent since the last call."""
        out = [parse_segment(s) for _, _, s in self.sent]
        self.sent = []
        return out

    def inject(self, src, dst, segment) -> None:
        self.tcp.segment_received(src, dst, memoryview(bytes(segment)), self.clock.seconds())

    def fire_timers(self) -> None:
        t = self.tcp.next_deadline()
        while t is not None and t <= self.clock.seconds():
            self.tcp.on_deadline(self.clock.seconds())
            t = self.tcp.next_deadline()


class Wire:
    """Carries segments between two fake stacks.  ``fault(direction, index,
    segment_bytes)`` returns a list of (delay, bytes) deliveries (empty list =
    drop); by default each segment is delivered once, immediately."""

    def __init__(self, a: FakeStack, b: FakeStack,
                 fault: Callable[[str, int, bytes], list] | None = None) -> None:
        self.a, self.b = a, b
        self.fault = fault
        self.count = 0
        self.pending: list[tuple[float, int, FakeStack, tuple]] = []
        self.delivered = 0

    def _collect(self) -> None:
        now = self.a.clock.seconds()
        for src, dst, name in ((self.a, self.b, "ab"), (self.b, self.a, "ba")):
            sent, src.sent = src.sent, []
            for s, d, seg in sent:
                self.count += 1
                outs = [(0.0, seg)] if self.fault is None else self.fault(name, self.count, seg)
                for delay, data in outs:
                    self.pending.append((now + delay, self.count, dst, (s, d, data)))

    def pump(self, limit: int = 100000) -> None:
        """Deliver everything due now, repeatedly, until quiet."""
        for _ in range(limit):
            self._collect()
            now = self.a.clock.seconds()
            due = [p for p in self.pending if p[0] <= now]
            if not due:
                return
            self.pending = [p for p in self.pending if p[0] > now]
            due.sort(key=lambda p: (p[0], p[1]))
            for _, _, dst, (s, d, data) in due:
                self.delivered += 1
                dst.inject(s, d, data)
        raise AssertionError("wire never went quiet")

    def next_time(self) -> float | None:
        ts = [t for t in (self.a.tcp.next_deadline(), self.b.tcp.next_deadline()) if t is not None]
        ts += [p[0] for p in self.pending]
        return min(ts) if ts else None

    def run(self, until: Callable[[], bool] | None = None, max_time: float = 600.0) -> None:
        """Pump and advance the clock from deadline to deadline."""
        clock = self.a.clock
        end = clock.seconds() + max_time
        while True:
            self.pump()
            self.a.fire_timers()
            self.b.fire_timers()
            self.pump()
            if until is not None and until():
                return
            t = self.next_time()
            if t is None or t > end:
                return
            if t > clock.seconds():
                clock.advance(t - clock.seconds())


class RecordingUser:
    """A TCPUser that records events (and optionally echoes)."""

    def __init__(self) -> None:
        self.events: list = []
        self.data = bytearray()
        self.conn = None
        self.established = False
        self.eof = False
        self.fin_acked = False
        self.closed: list = []
        self.writable = 0

    def tcp_established(self) -> None:
        self.established = True
        self.events.append("established")

    def tcp_data(self, data: bytes) -> None:
        self.data += data

    def tcp_eof(self) -> None:
        self.eof = True
        self.events.append("eof")

    def tcp_fin_acked(self) -> None:
        self.fin_acked = True
        self.events.append("fin_acked")

    def tcp_writable(self) -> None:
        self.writable += 1

    def tcp_closed(self, reason) -> None:
        self.closed.append(reason)
        self.events.append(("closed", reason))


def make_pair(v6: bool = False, fault=None, mtu: int = 1280):
    clock = Clock()
    clock.advance(1000.0)
    la, lb = (A6, B6) if v6 else (A4, B4)
    a = FakeStack(clock, [la], mtu=mtu, secret=b"a" * 32)
    b = FakeStack(clock, [lb], mtu=mtu, secret=b"b" * 32)
    return clock, a, b, Wire(a, b, fault)


def listen_recording(stack: FakeStack, port: int, **kw):
    """Listen on ``port``; returns (listener, list of accepted RecordingUsers)."""
    accepted: list[RecordingUser] = []

    def accept(conn):
        u = RecordingUser()
        u.conn = conn
        accepted.append(u)
        return u

    return stack.tcp.listen(port, accept, **kw), accepted
