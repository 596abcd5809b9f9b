"""ICMPv4 (RFC 792, RFC 1122 3.2.2) and ICMPv6 (RFC 4443) for the stack.

Owns: the echo responder on the stack's addresses, sending rate-limited
error messages (destination/port/host/protocol unreachable), delivering
received errors to TCP (``tcp.icmp_error`` if the TCP layer has it) and UDP
(connected sockets see ``connectionRefused``), and an echo client
(:meth:`ICMPLayer.ping`).

Errors are never sent in response to ICMP errors, non-first fragments, or
packets from multicast/unspecified sources (RFC 1122 3.2.2, RFC 4443
2.4(e)); they are limited by one token bucket per stack (``error_rate`` per
second, burst ``error_burst``), excess counted as ``icmp_rate_limited``.
Neighbour Discovery/MLD messages are meaningless on a WireGuard (layer-3)
link and are counted and ignored.
"""

from __future__ import annotations

import ipaddress
import random
import struct

from twisted.internet import defer

from nbgateway.netstack import wire
from nbgateway.netstack.checksum import pseudo_sum_packed
from nbgateway.netstack.iplayer import IIPLayer
from nbgateway.netstack.wire import WireError

_V4_UNREACH = {0: "net_unreachable", 1: "host_unreachable", 2: "protocol_unreachable",
               3: "port_unreachable", 4: "frag_needed", 9: "admin_prohibited",
               10: "admin_prohibited", 13: "admin_prohibited"}
_V6_UNREACH = {0: "net_unreachable", 1: "admin_prohibited", 3: "host_unreachable",
               4: "port_unreachable", 5: "admin_prohibited", 6: "admin_prohibited"}

# v4 quotes stay within 576 bytes (RFC 1812 4.3.2.3); v6 within 1280 (RFC 4443 2.4(c)).
_QUOTE_V4 = 576 - 28
_QUOTE_V6 = 1280 - 48
MAX_PENDING_PINGS = 256


class TokenBucket:
    """A token bucket over caller-supplied ``now`` (no timers)."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last: float | None = None

    def allow(self, now: float) -> bool:
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ICMPLayer:
    def __init__(self, stack: IIPLayer, *, error_rate: float = 100.0,
                 error_burst: int = 50) -> None:
        self.stack = stack
        self.counters = stack.counters
        self.errors = TokenBucket(error_rate, error_burst)
        self._ping_ident = random.getrandbits(16)
        self._ping_seq = 0
        self.pending_pings: dict[tuple[bytes, int], tuple[defer.Deferred, float, float]] = {}

    # ------------------------------------------------------------ input

    def input4(self, src: bytes, dst: bytes, msg: memoryview, peer_key: bytes, now: float) -> None:
        try:
            t, code, rest = wire.icmp_parse(msg)
        except WireError as e:
            self.counters[e.reason] += 1
            return
        if t == wire.ICMP4_ECHO_REQUEST:
            if not self._filtered(src, wire.PROTO_ICMP, peer_key):
                reply = wire.emit_icmpv4(wire.ICMP4_ECHO_REPLY, 0, rest, msg[8:])
                self.counters["icmp_echo_reply_tx"] += 1
                self.stack.send_ip(dst, src, wire.PROTO_ICMP, reply)
        elif t == wire.ICMP4_ECHO_REPLY:
            self._echo_reply(src, rest, now)
        elif t == wire.ICMP4_DEST_UNREACH or t in (wire.ICMP4_TIME_EXCEEDED,
                                                   wire.ICMP4_PARAM_PROBLEM):
            self.counters["icmp_error_rx"] += 1
            if t == wire.ICMP4_DEST_UNREACH:
                kind = _V4_UNREACH.get(code, "unreachable")
            elif t == wire.ICMP4_TIME_EXCEEDED:
                kind = "time_exceeded"
            else:
                kind = "parameter_problem"
            mtu = int.from_bytes(rest[2:4], "big") if kind == "frag_needed" else None
            self._error4(bytes(msg[8:]), kind, mtu, now)
        else:
            self.counters["icmp_ignored"] += 1

    def input6(self, src: bytes, dst: bytes, msg: memoryview, peer_key: bytes, now: float) -> None:
        try:
            t, code, rest = wire.icmp_parse(
                msg, pseudo_sum_packed(src, dst, wire.PROTO_ICMPV6, len(msg))
            )
        except WireError as e:
            self.counters[e.reason] += 1
            return
        if t == wire.ICMP6_ECHO_REQUEST:
            if not self._filtered(src, wire.PROTO_ICMPV6, peer_key):
                reply = wire.emit_icmpv6(dst, src, wire.ICMP6_ECHO_REPLY, 0, rest, msg[8:])
                self.counters["icmp_echo_reply_tx"] += 1
                self.stack.send_ip(dst, src, wire.PROTO_ICMPV6, reply)
        elif t == wire.ICMP6_ECHO_REPLY:
            self._echo_reply(src, rest, now)
        elif t < 128:
            self.counters["icmp_error_rx"] += 1
            mtu = None
            if t == wire.ICMP6_DEST_UNREACH:
                kind = _V6_UNREACH.get(code, "unreachable")
            elif t == wire.ICMP6_PACKET_TOO_BIG:
                kind, mtu = "frag_needed", int.from_bytes(rest, "big")
            elif t == wire.ICMP6_TIME_EXCEEDED:
                kind = "time_exceeded"
            else:
                kind = "parameter_problem"
            self._error6(bytes(msg[8:]), kind, mtu, now)
        else:
            self.counters["icmp_ignored"] += 1  # NDP, MLD, ...

    def _filtered(self, src: bytes, proto: int, peer_key: bytes) -> bool:
        f = self.stack.filter
        if f.active and not f.allows(src, proto, None, peer_key):
            self.counters["drop_filtered"] += 1
            return True
        return False

    def _error4(self, quoted: bytes, kind: str, mtu: int | None, now: float) -> None:
        if len(quoted) < 20 or quoted[0] >> 4 != 4:
            self.counters["drop_icmp_bad_quote"] += 1
            return
        hl = (quoted[0] & 0x0F) << 2
        if hl < 20 or len(quoted) < hl + 4 or struct.unpack_from("!H", quoted, 6)[0] & 0x1FFF:
            self.counters["drop_icmp_bad_quote"] += 1
            return
        self._deliver_error(quoted[12:16], quoted[16:20], quoted[9], quoted[hl:], kind, mtu, now)

    def _error6(self, quoted: bytes, kind: str, mtu: int | None, now: float) -> None:
        if len(quoted) < 40 or quoted[0] >> 4 != 6:
            self.counters["drop_icmp_bad_quote"] += 1
            return
        try:
            proto, off, frag = wire.ipv6_walk(quoted, quoted[6], 40, len(quoted))
        except WireError:
            self.counters["drop_icmp_bad_quote"] += 1
            return
        if (frag is not None and frag[0]) or len(quoted) < off + 4:
            self.counters["drop_icmp_bad_quote"] += 1
            return
        self._deliver_error(quoted[8:24], quoted[24:40], proto, quoted[off:], kind, mtu, now)

    def _deliver_error(
        self, local: bytes, remote: bytes, proto: int, inner: bytes, kind: str,
        mtu: int | None, now: float,
    ) -> None:
        stack = self.stack
        local_obj = stack.local_address(local)
        if local_obj is None:
            self.counters["drop_icmp_not_ours"] += 1
            return
        if proto == wire.PROTO_TCP:
            handler = getattr(stack.tcp, "icmp_error", None)
            if handler is not None:
                handler(local_obj, stack.address_object(remote), inner, kind, mtu, now)
        elif proto == wire.PROTO_UDP:
            sport, dport = struct.unpack_from("!HH", inner)
            stack.udp.icmp_error(local, remote, sport, dport, kind)

    # ----------------------------------------------------------- output

    def send_error(
        self, src: bytes, dst: bytes, icmp_type: int, code: int, quote: bytes | memoryview,
        now: float, rest: bytes = b"\x00\x00\x00\x00",
    ) -> bool:
        """Send an ICMP(v6) error from local ``src`` to ``dst`` quoting the
        offending packet, if the rate limit allows.  The caller has checked
        that the offending packet is not itself an ICMP error or a non-first
        fragment."""
        if not _unicast(dst):
            return False
        if not self.errors.allow(now):
            self.counters["icmp_rate_limited"] += 1
            return False
        if len(src) == 4:
            msg = wire.emit_icmpv4(icmp_type, code, rest, quote[:_QUOTE_V4])
            proto = wire.PROTO_ICMP
        else:
            limit = min(_QUOTE_V6, self.stack.mtu - 48)
            msg = wire.emit_icmpv6(src, dst, icmp_type, code, rest, quote[:limit])
            proto = wire.PROTO_ICMPV6
        self.counters["icmp_error_tx"] += 1
        return self.stack.send_ip(src, dst, proto, msg)

    # ------------------------------------------------------------- ping

    def ping(
        self, dst: str | ipaddress.IPv4Address | ipaddress.IPv6Address, data: bytes = b"",
        timeout: float = 5.0,
    ) -> defer.Deferred:
        """Send one echo request; fires with the RTT in seconds, or errbacks
        with ``defer.TimeoutError`` (or ``OSError`` if it could not be sent)."""
        stack = self.stack
        d_raw = ipaddress.ip_address(dst).packed
        src = stack.source_for(d_raw)
        if src is None:
            return defer.fail(OSError(f"no local address for {dst}"))
        if len(self.pending_pings) >= MAX_PENDING_PINGS:
            return defer.fail(OSError("too many pings in flight"))
        self._ping_seq = (self._ping_seq + 1) & 0xFFFF
        rest = struct.pack("!HH", self._ping_ident, self._ping_seq)
        if len(d_raw) == 4:
            msg = wire.emit_icmpv4(wire.ICMP4_ECHO_REQUEST, 0, rest, data)
            proto = wire.PROTO_ICMP
        else:
            msg = wire.emit_icmpv6(src, d_raw, wire.ICMP6_ECHO_REQUEST, 0, rest, data)
            proto = wire.PROTO_ICMPV6
        now = stack.clock.seconds()
        d: defer.Deferred = defer.Deferred()
        key = (d_raw, self._ping_seq)
        self.pending_pings[key] = (d, now, now + timeout)
        if not stack.send_ip(src, d_raw, proto, msg):
            del self.pending_pings[key]
            return defer.fail(OSError(f"echo request to {dst} was not sent"))
        stack.wakeup()
        return d

    def _echo_reply(self, src: bytes, rest: bytes, now: float) -> None:
        ident, seq = struct.unpack("!HH", rest)
        entry = self.pending_pings.pop((src, seq), None) if ident == self._ping_ident else None
        if entry is None:
            self.counters["icmp_echo_reply_unexpected"] += 1
            return
        d, sent, _deadline = entry
        d.callback(now - sent)

    def next_deadline(self) -> float | None:
        if not self.pending_pings:
            return None
        return min(e[2] for e in self.pending_pings.values())

    def cancel_pings(self) -> None:
        pending, self.pending_pings = self.pending_pings, {}
        for d, _sent, _deadline in pending.values():
            d.errback(OSError("stack closed"))

    def expire(self, now: float) -> None:
        late = [k for k, e in self.pending_pings.items() if e[2] <= now]
        for k in late:
            d = self.pending_pings.pop(k)[0]
            d.errback(defer.TimeoutError(f"no echo reply from {ipaddress.ip_address(k[0])}"))


def _unicast(raw: bytes) -> bool:
    if len(raw) == 4:
        return 0 < raw[0] < 224 and raw[0] != 127 and raw != b"\xff\xff\xff\xff"
    return raw[0] != 0xFF and raw != bytes(16) and raw != bytes(15) + b"\x01"

