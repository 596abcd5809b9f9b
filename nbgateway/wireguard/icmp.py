"""A minimal ICMPv4/ICMPv6 echo responder and pinger on top of a device.

This lets a real peer ping the device's tunnel addresses before the netstack
exists (issue 2).  The netstack takes echo over later; this module stays as the
diagnostic sink used by ``nbgateway-wg run``.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import struct

from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from nbgateway.interfaces import IPacketSink
from nbgateway.netstack.checksum import internet_checksum, pseudo_header_sum

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_ECHO = struct.Struct("!BBHHH")
ICMP4_ECHO_REQUEST, ICMP4_ECHO_REPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129


def build_echo(
    src: ipaddress.IPv4Address | ipaddress.IPv6Address,
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
    icmp_type: int,
    ident: int,
    seq: int,
    payload: bytes,
    ttl: int = 64,
) -> bytes:
    """An IPv4 or IPv6 packet carrying an ICMP echo request/reply."""
    body = bytearray(_ECHO.pack(icmp_type, 0, 0, ident, seq) + payload)
    if src.version == 4:
        struct.pack_into("!H", body, 2, internet_checksum(body))
        header = bytearray(
            _IPV4.pack(0x45, 0, 20 + len(body), 0, 0, ttl, 1, 0, src.packed, dst.packed)
        )
        struct.pack_into("!H", header, 10, internet_checksum(header))
        return bytes(header + body)
    csum = internet_checksum(body, pseudo_header_sum(src, dst, 58, len(body)))
    struct.pack_into("!H", body, 2, csum)
    header = _IPV6.pack(6 << 28, len(body), 58, ttl, src.packed, dst.packed)
    return header + bytes(body)


@implementer(IPacketSink)
class EchoResponder:
    """Answers echo requests to ``addresses`` and tracks our own pings."""

    def __init__(self, device, addresses: list[str], clock: IReactorTime) -> None:
        self.device = device
        self.clock = clock
        self.addresses = [ipaddress.ip_interface(a).ip for a in addresses]
        self._packed = {a.packed for a in self.addresses}
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._seq = itertools.count(1)
        self._pending: dict[int, tuple[Deferred, float]] = {}
        self.counters: dict[str, int] = {"echo_replied": 0, "dropped": 0}
        device.sink = self

    def packetReceived(self, packet: bytes, peer_key: bytes) -> None:
        try:
            self._handle(packet)
        except (struct.error, ValueError, IndexError):
            self.counters["dropped"] += 1

    def _handle(self, packet: bytes) -> None:
        version = packet[0] >> 4
        if version == 4:
            vihl, _, total, _, _, _, proto, _, src, dst = _IPV4.unpack_from(packet)
            ihl = (vihl & 0x0F) * 4
            if proto != 1 or dst not in self._packed or internet_checksum(packet[:ihl]):
                self.counters["dropped"] += 1
                return
            icmp = packet[ihl:total]
            if internet_checksum(icmp):
                self.counters["dropped"] += 1
                return
            request, reply = ICMP4_ECHO_REQUEST, ICMP4_ECHO_REPLY
            src_addr, dst_addr = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
        elif version == 6:
            _, plen, nxt, _, src, dst = _IPV6.unpack_from(packet)
            if nxt != 58 or dst not in self._packed:
                self.counters["dropped"] += 1
                return
            icmp = packet[40 : 40 + plen]
            src_addr, dst_addr = ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst)
            if internet_checksum(icmp, pseudo_header_sum(src_addr, dst_addr, 58, len(icmp))):
                self.counters["dropped"] += 1
                return
            request, reply = ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY
        else:
            self.counters["dropped"] += 1
            return
        icmp_type, _, _, ident, seq = _ECHO.unpack_from(icmp)
        if icmp_type == request:
            out = build_echo(dst_addr, src_addr, reply, ident, seq, bytes(icmp[8:]))
            self.device.sendPacket(out)
            self.counters["echo_replied"] += 1
        elif icmp_type == reply and ident == self._ident and seq in self._pending:
            d, sent = self._pending.pop(seq)
            d.callback(self.clock.seconds() - sent)
        else:
            self.counters["dropped"] += 1

    def ping(self, dst: str, timeout: float = 5.0, payload: bytes = b"nbgateway-ping") -> Deferred:
        """Send one echo request; the Deferred fires with the RTT in seconds,
        or fails with TimeoutError."""
        dst_addr = ipaddress.ip_address(dst)
        src = next((a for a in self.addresses if a.version == dst_addr.version), None)
        if src is None:
            raise ValueError(f"no local IPv{dst_addr.version} address to ping from")
        seq = next(self._seq) & 0xFFFF
        request = ICMP4_ECHO_REQUEST if dst_addr.version == 4 else ICMP6_ECHO_REQUEST
        d: Deferred = Deferred()
        self._pending[seq] = (d, self.clock.seconds())
        call = self.clock.callLater(timeout, self._timeout, seq)

        def cancel_timer(result):
            if call.active():
                call.cancel()
            return result

        d.addBoth(cancel_timer)
        self.device.sendPacket(build_echo(src, dst_addr, request, self._ident, seq, payload))
        return d

    def _timeout(self, seq: int) -> None:
        entry = self._pending.pop(seq, None)
        if entry is not None:
            entry[0].errback(TimeoutError(f"no echo reply for seq {seq}"))
