"""The outbound half of the per-account IP stack (a method-only mixin of
:class:`~nbgateway.netstack.stack.Stack`, which holds the state): the
output cork and IPv4/IPv6 packet emission.

Outbound: :meth:`Stack.send_transport` fills the TCP/UDP checksum in place,
prepends an IPv4 (DF set) or IPv6 header with TTL/hop limit ``ttl`` (64) and
hands the packet to the sender.  TCP segments larger than ``mtu`` are dropped
and counted (``drop_tx_too_big``; TCP clamps its MSS so this is a bug
signal).  Larger UDP/ICMP datagrams (up to 64 KiB) are fragmented at the
source (IPv4 with DF clear, IPv6 with a Fragment header; ``tx_fragments``)
unless ``fragment_output=False``, in which case they are dropped too.
"""

from __future__ import annotations

import struct

from nbgateway.netstack import wire
from nbgateway.netstack.checksum import IPAddress, fold, ones_sum

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6_FIRST = struct.Struct("!IHBB")
_FRAG6 = struct.Struct("!BBHI")
_TCP = wire.PROTO_TCP
_ADDR_SUMS_LIMIT = 4096  # raw address -> checksum sum entries (as the peer-key cache)
_UDP = wire.PROTO_UDP


class StackOutput:
    """Output methods of a stack (no state of its own)."""

    __slots__ = ()

    # ------------------------------------------------------------ output batching

    def cork(self) -> None:
        """Hold outgoing packets until the matching :meth:`uncork` (nestable);
        used around work that emits several packets at once (a TCP output run,
        one read's worth of inbound packets) so the device gets them in one
        ``sendPackets`` call."""
        self._cork_depth += 1

    def uncork(self) -> None:
        self._cork_depth -= 1
        if self._cork_depth > 0:
            return
        out, self._corked = self._corked, []
        if out:
            sent = self.sender.sendPackets(out)
            if sent < len(out):
                self._counters["tx_refused"] += len(out) - sent


    # ----------------------------------------------------------- outbound

    def send_transport(
        self, src: IPAddress | bytes, dst: IPAddress | bytes, protocol: int, segment: bytearray,
    ) -> bool:
        """Send a transport segment: fill its checksum in place (TCP at offset
        16, UDP at offset 6; other protocols are sent as given), prepend the
        IP header and hand it to the sender.  Returns False (and counts) if it
        is larger than the MTU or the sender refused it."""
        s = src if type(src) is bytes else src.packed  # type: ignore[union-attr]
        d = dst if type(dst) is bytes else dst.packed  # type: ignore[union-attr]
        n = len(segment)
        sums = self._addr_sums
        a1 = sums.get(s)
        if a1 is None:
            a1 = self._addr_sum(s)
        a2 = sums.get(d)
        if a2 is None:
            a2 = self._addr_sum(d)
        addr_sum = a1 + a2
        if protocol == _TCP:
            segment[16] = segment[17] = 0
            ck = fold(ones_sum(segment, addr_sum + _TCP + n))
            segment[16] = ck >> 8
            segment[17] = ck & 0xFF
        elif protocol == _UDP:
            segment[6] = segment[7] = 0
            ck = fold(ones_sum(segment, addr_sum + _UDP + n)) or 0xFFFF
            segment[6] = ck >> 8
            segment[7] = ck & 0xFF
        return self.send_ip(s, d, protocol, segment, addr_sum)

    def _addr_sum(self, raw: bytes) -> int:
        sums = self._addr_sums
        if len(sums) >= _ADDR_SUMS_LIMIT:
            sums.clear()
        v = sums[raw] = ones_sum(raw)
        return v

    def send_ip(
        self, s: bytes, d: bytes, protocol: int, payload: bytes | bytearray,
        addr_sum: int | None = None,
    ) -> bool:
        if self._closed:
            self._counters["drop_closed"] += 1
            return False
        n = len(payload)
        ttl = self.ttl
        if len(s) == 4:
            total = 20 + n
            if total > self.mtu:
                if protocol != _TCP and self.fragment_output and total <= 0xFFFF:
                    return self._send_fragments4(s, d, protocol, payload)
                self._counters["drop_tx_too_big"] += 1
                return False
            if addr_sum is None:
                addr_sum = ones_sum(s) + ones_sum(d)
            ident = self._ident = (self._ident + 1) & 0xFFFF
            # header words: 0x4500 + DF 0x4000 + total + ident + ttl|proto + addresses
            hck = fold(addr_sum + 0x8500 + total + ident + ((ttl << 8) | protocol))
            packet = _IP4.pack(0x45, 0, total, ident, wire.IP4_DF, ttl, protocol, hck, s, d)
        else:
            if 40 + n > self.mtu:
                if protocol != _TCP and self.fragment_output and n <= 0xFFFF:
                    return self._send_fragments6(s, d, protocol, payload)
                self._counters["drop_tx_too_big"] += 1
                return False
            packet = _IP6_FIRST.pack(0x60000000, n, protocol, ttl) + s + d
        self._counters["tx_packets"] += 1
        if self._cork_depth:
            self._corked.append(packet + payload)
            return True
        if not self.sender.sendPacket(packet + payload):
            self._counters["tx_refused"] += 1
            return False
        return True

    def _send_fragments4(self, s: bytes, d: bytes, protocol: int, payload: bytes) -> bool:
        """RFC 791 fragmentation of an oversized non-TCP datagram (DF clear)."""
        size = (self.mtu - 20) & ~7
        ident = self._ident = (self._ident + 1) & 0xFFFF
        n = len(payload)
        ok = True
        for off in range(0, n, size):
            chunk = payload[off : off + size]
            ff = (off >> 3) | (wire.IP4_MF if off + size < n else 0)
            hdr = wire.emit_ipv4_header(s, d, protocol, len(chunk), ttl=self.ttl, ident=ident,
                                        flags_frag=ff)
            self._counters["tx_fragments"] += 1
            ok = self.sender.sendPacket(hdr + chunk) and ok
        if not ok:
            self._counters["tx_refused"] += 1
        return ok

    def _send_fragments6(self, s: bytes, d: bytes, protocol: int, payload: bytes) -> bool:
        """RFC 8200 4.5 source fragmentation with a Fragment header."""
        size = (self.mtu - 48) & ~7
        self._ident6 = ident = (self._ident6 + 1) & 0xFFFFFFFF
        n = len(payload)
        ok = True
        for off in range(0, n, size):
            chunk = payload[off : off + size]
            fh = _FRAG6.pack(protocol, 0, off | (1 if off + size < n else 0), ident)
            hdr = _IP6_FIRST.pack(0x60000000, 8 + len(chunk), wire.PROTO_FRAGMENT, self.ttl)
            self._counters["tx_fragments"] += 1
            ok = self.sender.sendPacket(hdr + s + d + fh + chunk) and ok
        if not ok:
            self._counters["tx_refused"] += 1
        return ok
