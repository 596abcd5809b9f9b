"""The per-account IP stack: an ``IPacketSink`` for the WireGuard device.

Inbound (:meth:`Stack.packetReceived`): validate the IPv4/IPv6 header
(``wire.py``), accept only packets addressed to one of the stack's addresses
(others are dropped and counted ``drop_not_local``; unicast ones get a
rate-limited ICMP host unreachable; there is no forwarding), reassemble
fragments (``ip.Reassembler``), verify the TCP/UDP checksum (unless
``verify_checksums=False``: the link below authenticated every packet, see
:class:`Stack`), apply the packet filter (``filter.py``) and dispatch: 6 ->
``tcp.segment_received`` (or, for consecutive in-order segments of one
connection within one batch, ``tcp.segments_received`` once for the run: see
``coalesce.py``),
17 -> UDP sockets, 1/58 -> ICMP, anything else -> ICMP protocol unreachable.
Nothing raises out of ``packetReceived``: malformed input is counted under
its ``drop_*`` reason in :attr:`Stack.counters`; an unexpected exception is
logged and counted as ``error_internal``.

Outbound: :meth:`Stack.send_transport` fills the TCP/UDP checksum in place,
prepends an IPv4 (DF set) or IPv6 header with TTL/hop limit ``ttl`` (64) and
hands the packet to the sender.  TCP segments larger than ``mtu`` are dropped
and counted (``drop_tx_too_big``; TCP clamps its MSS so this is a bug
signal).  Larger UDP/ICMP datagrams (up to 64 KiB) are fragmented at the
source (IPv4 with DF clear, IPv6 with a Fragment header; ``tx_fragments``)
unless ``fragment_output=False``, in which case they are dropped too.

Inbound TTL/hop limit is not checked: a host never discards a datagram for
its TTL (RFC 1122 3.2.1.7); only forwarders do and we never forward.

Timers: one ``IDelayedCall`` per stack, re-armed by :meth:`Stack.wakeup` at
the earliest of ``tcp.next_deadline()``, the fragment expiry and ping
timeouts.  The stack calls ``wakeup()`` itself after every
``tcp.segment_received`` (once per inbound batch of ``packetsReceived``) and
after every ``tcp.on_deadline``; the TCP layer
only needs to call it for changes made outside those calls (user writes,
connect, close) and only when its deadline may have moved *earlier*: a later
deadline needs no call (the timer fires early and re-arms).  ``_timer`` is
None whenever no call is pending.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from nbgateway.interfaces import IPacketBatchSink, IPacketSender
from nbgateway.netstack import wire
from nbgateway.netstack.checksum import fold, ones_sum
from nbgateway.netstack.coalesce import TCPCoalescer
from nbgateway.netstack.filter import PacketFilter
from nbgateway.netstack.icmp import ICMPLayer
from nbgateway.netstack.ip import AddressCache, Reassembler
from nbgateway.netstack.iplayer import IIPLayer
from nbgateway.netstack.udp import UDPLayer
from nbgateway.netstack.wire import WireError

log = Logger()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressLike = str | IPAddress

DEFAULT_MTU = 1280

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6_FIRST = struct.Struct("!IHBB")
_FRAG6 = struct.Struct("!BBHI")
_ipv4_parse = wire.ipv4_parse
_ipv6_parse = wire.ipv6_parse
_ipv6_walk = wire.ipv6_walk
_TCP = wire.PROTO_TCP
_PEER_KEYS_LIMIT = 4096
_QUOTE = 1280  # payload bytes kept for an ICMP error quote of a reassembled datagram
_UDP = wire.PROTO_UDP


def _default_tcp_factory(stack: Stack) -> Any:
    from nbgateway.netstack.tcp import TCPLayer  # written by the TCP layer's owner

    return TCPLayer(stack)


@implementer(IPacketBatchSink, IIPLayer)
class Stack:
    """One user-space IP stack bound to a set of tunnel addresses.

    Public attributes: ``sender``, ``clock``, ``mtu``, ``ttl``,
    ``addresses`` (tuple of ipaddress objects), ``counters``
    (``collections.Counter``), ``filter`` (:class:`PacketFilter`),
    ``fragments`` (:class:`Reassembler`), ``tcp``, ``udp``
    (:class:`UDPLayer`), ``icmp`` (:class:`ICMPLayer`).  The layers use only
    the :class:`~nbgateway.netstack.iplayer.IIPLayer` interface it provides.

    ``verify_checksums=False`` is for a stack fed by WireGuard: every packet
    it receives was authenticated by the AEAD, so the TCP/UDP checksums of
    inbound packets are not verified (Linux marks decrypted WireGuard packets
    CHECKSUM_UNNECESSARY; gVisor under wireguard-go skips them likewise).
    Output checksums are always computed.
    """

    # 31 attributes: more than CPython 3.11 shares dict keys for (30), so
    # without slots every account's stack carried its own ~1.6 KiB dict
    __slots__ = (
        "_addr_sums", "_batch_wakeup", "_cache", "_closed", "_coalescing", "_cork_depth",
        "_corked", "_first", "_ident", "_ident6", "_local", "_peer_keys", "_tcp_fast", "_timer",
        "_timer_at", "addresses", "clock", "coalesce", "coalescer", "counters", "filter",
        "fragment_output", "fragments", "icmp", "icmp_host_unreachable", "mtu", "sender", "tcp",
        "ttl", "udp", "verify_checksums",
    )

    #: tcp_fast.emit may build this stack's IPv4/IPv6 + TCP packets itself
    #: (it uses ``ttl``, ``mtu``, ``_ident``, the cork, ``sender`` and
    #: ``counters`` exactly as :meth:`send_transport`/:meth:`send_ip` do)
    fused_tcp_output = True

    def __init__(
        self,
        sender: IPacketSender,
        clock: IReactorTime,
        addresses: Iterable[AddressLike],
        *,
        mtu: int = DEFAULT_MTU,
        tcp_factory: Callable[[Stack], Any] | None = None,
        ttl: int = wire.DEFAULT_TTL,
        icmp_host_unreachable: bool = True,
        fragment_output: bool = True,
        icmp_error_rate: float = 100.0,
        icmp_error_burst: int = 50,
        reassembly_timeout: float = 30.0,
        max_reassembly_datagrams: int = 64,
        max_reassembly_bytes: int = 256 * 1024,
        verify_checksums: bool = True,
        coalesce: bool = True,
    ) -> None:
        addrs = tuple(ipaddress.ip_address(a) for a in addresses)
        if not addrs:
            raise ValueError("a stack needs at least one address")
        if not 576 <= mtu <= 0xFFFF:
            raise ValueError(f"mtu {mtu} out of range")
        if mtu < 1280 and any(a.version == 6 for a in addrs):
            raise ValueError("IPv6 needs an MTU of at least 1280 (RFC 8200 5)")
        self.sender = sender
        self.clock = clock
        self.mtu = mtu
        self.ttl = ttl
        self.addresses = addrs
        self.icmp_host_unreachable = icmp_host_unreachable
        self.verify_checksums = verify_checksums
        self.coalescer = TCPCoalescer(self._tcp_one, self._tcp_run)
        self.coalesce = coalesce  # False: every segment reaches TCP on its own (A/B benches)
        self._coalescing = False  # inside packetsReceived: TCP segments go to the coalescer
        self._batch_wakeup = False  # inside packetsReceived: one timer re-arm at its end
        self._local: dict[bytes, IPAddress] = {a.packed: a for a in addrs}
        self._first: dict[int, bytes | None] = {
            v: next((a.packed for a in addrs if a.version == v), None) for v in (4, 6)
        }
        self.counters: Counter[str] = Counter()
        self.filter = PacketFilter()
        self.fragments = Reassembler(
            self.counters, timeout=reassembly_timeout,
            max_datagrams=max_reassembly_datagrams, max_bytes=max_reassembly_bytes,
        )
        self._cache = AddressCache()
        self._peer_keys: dict[bytes, bytes] = {}
        self._addr_sums: dict[bytes, int] = {}  # raw address -> its checksum sum
        self.icmp = ICMPLayer(self, error_rate=icmp_error_rate, error_burst=icmp_error_burst)
        self.udp = UDPLayer(self)
        self._ident = random.getrandbits(16)
        self._ident6 = random.getrandbits(32)
        self.fragment_output = fragment_output
        self._timer: Any = None
        self._timer_at: float | None = None
        self._closed = False
        # output cork: while > 0, packets collect in _corked and leave in one
        # sender.sendPackets call when the outermost uncork() runs
        self._cork_depth = 0
        self._corked: list[bytes] = []
        self.tcp: Any = (tcp_factory or _default_tcp_factory)(self)
        # the TCP layer's fused input for the predicted segment (tcp_fast.py), if it has one
        self._tcp_fast: Any = getattr(self.tcp, "fast", None)

    def __repr__(self) -> str:
        return f"<Stack {' '.join(map(str, self.addresses))} mtu={self.mtu}>"

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
                self.counters["tx_refused"] += len(out) - sent

    # ------------------------------------------------------------ inbound

    def packetsReceived(self, packets: list[bytes], peer_key: bytes) -> None:
        """IPacketBatchSink: a run of packets from one peer; consecutive
        in-order TCP segments of one connection reach the TCP layer as one
        (``coalesce.py``); replies leave together once all are processed."""
        self.cork()
        self._coalescing = self.coalesce and len(packets) > 1
        outer = not self._batch_wakeup
        self._batch_wakeup = True
        try:
            for packet in packets:
                self.packetReceived(packet, peer_key)
            if self._coalescing:
                self._coalescing = False
                self.coalescer.flush()
        except Exception:
            self.counters["error_internal"] += 1
            log.failure("netstack: unexpected error handling an inbound batch")
        finally:
            self._coalescing = False
            if outer:
                self._batch_wakeup = False
                self.wakeup()
            self.uncork()

    def packetReceived(self, packet: bytes, peer_key: bytes) -> None:
        """IPacketSink: one decrypted IP packet from peer ``peer_key``."""
        if self._closed:
            self.counters["drop_closed"] += 1
            return
        try:
            mv = memoryview(packet)
            if not mv:
                self.counters["drop_empty"] += 1
                return
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            v = mv[0] >> 4
            if v == 4:
                self._input4(mv, peer_key)
            elif v == 6:
                self._input6(mv, peer_key)
            else:
                self.counters["drop_bad_version"] += 1
        except Exception:
            self.counters["error_internal"] += 1
            log.failure("netstack: unexpected error handling an inbound packet")

    def _input4(self, mv: memoryview, peer_key: bytes) -> None:
        c = self.counters
        try:
            hl, total, ident, ff, _ttl, proto, src, dst = _ipv4_parse(mv)
        except WireError as e:
            c[e.reason] += 1
            return
        c["rx_packets"] += 1
        if src[0] >= 224 or src[0] == 127 or src[0] == 0 or src in self._local:
            c["drop_bad_source"] += 1
            return
        local = self._local.get(dst)
        if local is None:
            self._not_local(4, src, dst, proto, mv[:total], hl)
            return
        if self._peer_keys.get(src) is not peer_key:
            self._remember_peer(src, peer_key)
        now = self.clock.seconds()
        if ff & 0x3FFF:  # MF set or non-zero offset
            done = self.fragments.add(
                (src, dst, proto, ident), (ff & wire.IP4_OFFSET_MASK) << 3,
                bool(ff & wire.IP4_MF), mv[hl:total], now, proto,
            )
            if done is None:
                self.wakeup()
                return
            payload = done[1]
            quote = wire.emit_ipv4_header(
                src, dst, proto, min(len(payload), 0xFFFF - 20), ident=ident,
            ) + payload[:_QUOTE]
            self._transport(src, dst, local, proto, memoryview(payload), quote, peer_key, now)
            return
        if proto == _TCP and hl == 20:
            # fast path: addresses and segment are contiguous, one checksum pass
            n = total - 20
            if n < 20:
                c["drop_tcp_truncated"] += 1
                return
            if self.verify_checksums and fold(ones_sum(mv[12:total]) + _TCP + n):
                c["drop_tcp_bad_checksum"] += 1
                return
            if self._coalescing:
                self.coalescer.add(src, local, mv[20:total], peer_key, now)
            else:
                self._tcp_one(src, local, mv[20:total], peer_key, now)
            return
        self._transport(src, dst, local, proto, mv[hl:total], mv[:total], peer_key, now)

    def _input6(self, mv: memoryview, peer_key: bytes) -> None:
        c = self.counters
        try:
            end, nh, _hlim, src, dst = _ipv6_parse(mv)
        except WireError as e:
            c[e.reason] += 1
            return
        c["rx_packets"] += 1
        if src[0] == 0xFF or src in _V6_BAD_SOURCES or src in self._local:
            c["drop_bad_source"] += 1
            return
        local = self._local.get(dst)
        if local is None:
            self._not_local(6, src, dst, nh, mv[:end], 40)
            return
        if self._peer_keys.get(src) is not peer_key:
            self._remember_peer(src, peer_key)
        try:
            proto, off, frag = _ipv6_walk(mv, nh, 40, end)
        except WireError as e:
            c[e.reason] += 1
            return
        now = self.clock.seconds()
        if frag is not None:
            foff, more, ident = frag
            done = self.fragments.add((src, dst, ident), foff, more, mv[off:end], now, proto)
            if done is None:
                self.wakeup()
                return
            first_proto, payload = done
            pmv = memoryview(payload)
            try:
                proto, off2, frag2 = _ipv6_walk(pmv, first_proto, 0, len(payload), False)
            except WireError as e:
                c[e.reason] += 1
                return
            if frag2 is not None:
                c["drop_ip6_nested_fragment"] += 1
                return
            quote = wire.emit_ipv6_header(src, dst, first_proto, len(payload)) + payload[:_QUOTE]
            self._transport(src, dst, local, proto, pmv[off2:], quote, peer_key, now, off2 + 40)
            return
        if proto == _TCP and off == 40:
            n = end - 40
            if n < 20:
                c["drop_tcp_truncated"] += 1
                return
            if self.verify_checksums and fold(ones_sum(mv[8:end]) + _TCP + n):
                c["drop_tcp_bad_checksum"] += 1
                return
            if self._coalescing:
                self.coalescer.add(src, local, mv[40:end], peer_key, now)
            else:
                self._tcp_one(src, local, mv[40:end], peer_key, now)
            return
        self._transport(src, dst, local, proto, mv[off:end], mv[:end], peer_key, now, off)

    def _remember_peer(self, src: bytes, peer_key: bytes) -> None:
        pk = self._peer_keys
        if src not in pk and len(pk) >= _PEER_KEYS_LIMIT:
            pk.clear()
        pk[src] = peer_key

    def peer_key_for(self, addr: IPAddress | bytes) -> bytes | None:
        """The WireGuard public key of the peer whose packets from ``addr``
        this stack accepted last (WireGuard cryptokey routing makes this
        unique per source address).  None if unknown.  Bounded cache: callers
        that need it for a connection's lifetime should read it when the
        connection opens."""
        raw = addr if type(addr) is bytes else addr.packed  # type: ignore[union-attr]
        return self._peer_keys.get(raw)

    def _transport(
        self, src: bytes, dst: bytes, local: IPAddress, proto: int, seg: memoryview,
        quote: memoryview | bytes, peer_key: bytes, now: float, hdr_off: int = 20,
    ) -> None:
        c = self.counters
        if proto == _TCP:
            n = len(seg)
            if n < 20:
                c["drop_tcp_truncated"] += 1
                return
            if self.verify_checksums and fold(
                ones_sum(seg, ones_sum(src) + ones_sum(dst) + _TCP + n)
            ):
                c["drop_tcp_bad_checksum"] += 1
                return
            self._tcp_one(src, local, seg, peer_key, now)
        elif proto == _UDP:
            self.udp.input(src, dst, seg, quote, peer_key, now, self.verify_checksums)
        elif proto == wire.PROTO_ICMP and len(src) == 4:
            self.icmp.input4(src, dst, seg, peer_key, now)
        elif proto == wire.PROTO_ICMPV6 and len(src) == 16:
            self.icmp.input6(src, dst, seg, peer_key, now)
        elif proto == wire.PROTO_NONE:
            c["drop_no_next_header"] += 1
        else:
            c["drop_unknown_protocol"] += 1
            if len(src) == 4:
                self.icmp.send_error(dst, src, wire.ICMP4_DEST_UNREACH,
                                     wire.ICMP4_CODE_PROTO_UNREACH, quote, now)
            else:  # Parameter Problem, pointer at the offending Next Header field
                pointer = 6 if hdr_off == 40 else None
                if pointer is not None:
                    self.icmp.send_error(dst, src, wire.ICMP6_PARAM_PROBLEM,
                                         wire.ICMP6_CODE_UNRECOGNIZED_NH, quote, now,
                                         pointer.to_bytes(4, "big"))

    def _tcp_one(self, src: bytes, local: IPAddress, seg: memoryview, peer_key: bytes,
                 now: float) -> None:
        """One accepted TCP segment: the fused fast path (``tcp_fast.py``) for
        the predicted segment of an established connection, else the filter
        (new connections), then TCP."""
        fast = self._tcp_fast
        if fast is not None and fast.input(src, local, seg, now):
            if not self._batch_wakeup:
                self.wakeup()
            return
        f = self.filter
        if f.active and seg[13] & 0x12 == 0x02 and not f.allows(
            src, _TCP, (seg[2] << 8) | seg[3], peer_key
        ):
            self.counters["drop_filtered"] += 1
            return
        self.tcp.segment_received(self._cache.obj(src), local, seg, now)
        if not self._batch_wakeup:
            self.wakeup()

    def _tcp_run(self, src: bytes, local: IPAddress, header: memoryview, payload: bytes,
                 count: int, now: float) -> None:
        """``count`` coalesced in-order segments (never a SYN, so the filter
        has nothing to say): one call to the TCP layer when it takes runs."""
        run = getattr(self.tcp, "segments_received", None)
        if run is None:  # a TCP layer without the run entry point
            self.tcp.segment_received(self._cache.obj(src), local,
                                      memoryview(bytes(header) + payload), now)
        else:
            run(self._cache.obj(src), local, header, payload, count, now)
        if not self._batch_wakeup:
            self.wakeup()

    def port_unreachable(
        self, src: bytes, dst: bytes, quote: memoryview | bytes, now: float,
    ) -> None:
        """Called by the UDP layer for a datagram to a closed port."""
        if len(src) == 4:
            self.icmp.send_error(dst, src, wire.ICMP4_DEST_UNREACH,
                                 wire.ICMP4_CODE_PORT_UNREACH, quote, now)
        else:
            self.icmp.send_error(dst, src, wire.ICMP6_DEST_UNREACH,
                                 wire.ICMP6_CODE_PORT_UNREACH, quote, now)

    def _not_local(
        self, version: int, src: bytes, dst: bytes, proto: int, pkt: memoryview, hl: int,
    ) -> None:
        """A packet for an address that is not ours: count, and tell unicast
        senders the host is unreachable (never about ICMP errors, non-first
        fragments, multicast/broadcast)."""
        self.counters["drop_not_local"] += 1
        if not self.icmp_host_unreachable:
            return
        me = self._first[version]
        if me is None:
            return
        if version == 4:
            if dst[0] >= 224 or dst[0] == 0 or dst[3] == 255 or (
                struct.unpack_from("!H", pkt, 6)[0] & wire.IP4_OFFSET_MASK
            ):
                return
            if proto == wire.PROTO_ICMP and (len(pkt) <= hl or pkt[hl] in wire.ICMP4_ERROR_TYPES):
                return
            self.icmp.send_error(me, src, wire.ICMP4_DEST_UNREACH, wire.ICMP4_CODE_HOST_UNREACH,
                                 pkt, self.clock.seconds())
        else:
            if dst[0] == 0xFF or proto in (0, 43, 44, 50, 51, 60):
                return  # multicast, or extension headers we do not walk for strangers
            if proto == wire.PROTO_ICMPV6 and (len(pkt) <= 40 or pkt[40] < 128):
                return
            self.icmp.send_error(me, src, wire.ICMP6_DEST_UNREACH, wire.ICMP6_CODE_ADDR_UNREACH,
                                 pkt, self.clock.seconds())

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
        if len(sums) >= _PEER_KEYS_LIMIT:
            sums.clear()
        v = sums[raw] = ones_sum(raw)
        return v

    def send_ip(
        self, s: bytes, d: bytes, protocol: int, payload: bytes | bytearray,
        addr_sum: int | None = None,
    ) -> bool:
        if self._closed:
            self.counters["drop_closed"] += 1
            return False
        n = len(payload)
        ttl = self.ttl
        if len(s) == 4:
            total = 20 + n
            if total > self.mtu:
                if protocol != _TCP and self.fragment_output and total <= 0xFFFF:
                    return self._send_fragments4(s, d, protocol, payload)
                self.counters["drop_tx_too_big"] += 1
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
                self.counters["drop_tx_too_big"] += 1
                return False
            packet = _IP6_FIRST.pack(0x60000000, n, protocol, ttl) + s + d
        self.counters["tx_packets"] += 1
        if self._cork_depth:
            self._corked.append(packet + payload)
            return True
        if not self.sender.sendPacket(packet + payload):
            self.counters["tx_refused"] += 1
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
            self.counters["tx_fragments"] += 1
            ok = self.sender.sendPacket(hdr + chunk) and ok
        if not ok:
            self.counters["tx_refused"] += 1
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
            self.counters["tx_fragments"] += 1
            ok = self.sender.sendPacket(hdr + s + d + fh + chunk) and ok
        if not ok:
            self.counters["tx_refused"] += 1
        return ok

    def source_for(self, dst: bytes) -> bytes | None:
        """The local address used to reach ``dst`` (first of its family)."""
        return self._first[4 if len(dst) == 4 else 6]

    def local_address(self, raw: bytes) -> IPAddress | None:
        """The ipaddress object of one of the stack's own addresses, or None."""
        return self._local.get(raw)

    def address_object(self, raw: bytes) -> IPAddress:
        """The (cached) ipaddress object of a raw address."""
        return self._cache.obj(raw)

    def address_text(self, raw: bytes) -> str:
        """The (cached) text form of a raw address."""
        return self._cache.text(raw)

    def source_address(self, dst: IPAddress) -> IPAddress | None:
        """The stack address used as source towards ``dst`` (None if the stack
        has no address of that family)."""
        raw = self._first[dst.version]
        return None if raw is None else self._local[raw]

    def is_local(self, addr: IPAddress) -> bool:
        return addr.packed in self._local

    def ping(self, dst: AddressLike, data: bytes = b"", timeout: float = 5.0) -> Any:
        """ICMP echo through the tunnel; Deferred firing with the RTT."""
        return self.icmp.ping(dst, data, timeout)

    # -------------------------------------------------------------- timer

    def next_deadline(self) -> float | None:
        """Earliest of the TCP, reassembly and ping deadlines (None: none)."""
        best = self.tcp.next_deadline()
        if self.fragments.table:
            d = self.fragments.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        if self.icmp.pending_pings:
            d = self.icmp.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def wakeup(self) -> None:
        """Re-arm the stack's single timer at the earliest deadline.  Cheap
        when the timer is already armed at or before that time (it then fires
        early and re-arms), so it is called after every TCP segment."""
        if self._closed:
            return
        at = self.next_deadline()
        timer = self._timer
        if at is None:
            if timer is not None:
                timer.cancel()
                self._timer = self._timer_at = None
            return
        if timer is not None:
            if self._timer_at <= at:  # type: ignore[operator]
                return
            timer.reset(max(0.0, at - self.clock.seconds()))
        else:
            self._timer = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._fire)
        self._timer_at = at

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        now = self.clock.seconds()
        try:
            self.fragments.expire(now)
            self.icmp.expire(now)
            if self.tcp is not None:
                self.tcp.on_deadline(now)
        except Exception:
            self.counters["error_internal"] += 1
            log.failure("netstack: unexpected error in deadline processing")
        self.wakeup()

    def close(self) -> None:
        """Shut the stack down (its account is going away): cancel the timer,
        stop every UDP port (protocols see ``stopProtocol``), fail pending
        pings, call ``tcp.close()`` if the TCP layer has one, and from then on
        drop inbound packets (``drop_closed``) and refuse to send."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
        for port in list(self.udp.sockets.values()):
            port.stopListening()
        self.icmp.cancel_pings()
        tcp_close = getattr(self.tcp, "close", None)
        if callable(tcp_close):
            tcp_close()

    @property
    def closed(self) -> bool:
        return self._closed


_V6_BAD_SOURCES = frozenset((bytes(16), bytes(15) + b"\x01"))  # ::, ::1
