"""The inbound half of the per-account IP stack (a method-only mixin of
:class:`~nbgateway.netstack.stack.Stack`, which holds the state).

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

Inbound TTL/hop limit is not checked: a host never discards a datagram for
its TTL (RFC 1122 3.2.1.7); only forwarders do and we never forward.
"""

from __future__ import annotations

import struct

from twisted.logger import Logger

from nbgateway.netstack import tcp_fast, wire
from nbgateway.netstack.checksum import IPAddress, fold, ones_sum
from nbgateway.netstack.tcp_const import ESTABLISHED
from nbgateway.netstack.wire import WireError

log = Logger(namespace="nbgateway.netstack.stack")  # the stack's, as before the split

_ipv4_parse = wire.ipv4_parse
_TS_WORD = tcp_fast._TS_WORD
_ACK_ONLY = 0x10  # ACK (PSH masked off): what the fused input takes
_ESTABLISHED = ESTABLISHED
_IP4_HDR = struct.Struct("!BBHHHBBH4s4s").unpack_from
_IP4_THIRDS = struct.Struct("!QQI").unpack_from
#: what the batch loop's inline input reads: an IPv4 header's total length,
#: flags and fragment offset, protocol and addresses and the transport
#: header's first word (TCP's ports); then, from the TCP header's second word,
#: its fields but the checksum and urgent pointer, then the timestamp option's
#: place
_IP4_FIELDS = struct.Struct("!2xH2xHxB2x4s4sI").unpack_from
_TCP32_FIELDS = struct.Struct("!IIBBH4xIII").unpack_from
_TCP20_TAIL = struct.Struct("!IIBBH").unpack_from
_ipv6_parse = wire.ipv6_parse
_ipv6_walk = wire.ipv6_walk
_TCP = wire.PROTO_TCP
_PEER_KEYS_LIMIT = 4096
_QUOTE = 1280  # payload bytes kept for an ICMP error quote of a reassembled datagram
_UDP = wire.PROTO_UDP


class StackInput:
    """Inbound methods of a stack (no state of its own)."""

    __slots__ = ()

    # ------------------------------------------------------------ inbound

    def packetsReceived(self, packets: list[bytes], peer_key: bytes) -> None:
        """IPacketBatchSink: a run of packets from one peer; consecutive
        in-order TCP segments of one connection reach the TCP layer as one
        (``coalesce.py``); replies leave together once all are processed."""
        self._cork_depth += 1  # cork(), inlined
        fast = self._tcp_fast
        # coalescing (coalesce.py) only pays for two consecutive packets of one
        # flow: the first two are compared here (a bulk sender's run is then
        # coalesced whole); the fused input below compares each later packet's
        # source and ports with the previous one's and switches it on from
        # the second of a pair (a keep-alive batch, one request per
        # connection, never does); without the fused input every pair is
        # compared first (_one_flow_twice); a packet the fused input does not
        # parse (IPv6, IPv4 options) switches it on, as the pass did
        fast_on = fast is not None and fast.enabled
        look = self.coalesce and len(packets) > 1
        if look:
            if not fast_on:
                self._coalescing = _one_flow_twice(packets)
            else:
                a, b = packets[0], packets[1]
                self._coalescing = not a or a[0] != 0x45 or not b or b[0] != 0x45 \
                    or a[12:24] == b[12:24]
        else:
            self._coalescing = False
        prev_src = prev_ports = None
        outer = not self._batch_wakeup
        self._batch_wakeup = True
        try:
            input4 = self._input4
            local_map = self._local
            for packet in packets:
                # packetReceived, inlined for the common case: IPv4 in bytes
                if packet.__class__ is bytes and packet and not self._closed \
                        and ((h := packet[0]) == 0x45 or h >> 4 == 4):
                    try:
                        # _input4 for the segment the fused TCP input may take
                        # (an option-less header, not a fragment, TCP, ours),
                        # inlined: every check first, touching nothing, and any
                        # packet that fails one goes to _input4 whole, which
                        # repeats the checks and counts the drop
                        n = len(packet)
                        if h == 0x45 and n >= 40 and fast_on and not self._coalescing:
                            total, ff, proto, src, dst, ports = _IP4_FIELDS(packet)
                            if ports == prev_ports and src == prev_src and look:
                                # the previous packet's flow again: coalesce from
                                # here on (that one is delivered already, in order)
                                self._coalescing = True
                                input4(memoryview(packet), peer_key)
                                continue
                            prev_src, prev_ports = src, ports
                            a, b, v = _IP4_THIRDS(packet)
                            v += a + b
                            local = local_map.get(dst)
                            if (40 <= total <= n and v and not v % 0xFFFF and proto == _TCP
                                    and not ff & 0x3FFF and local is not None
                                    and 0 < src[0] < 224 and src[0] != 127
                                    and src not in local_map
                                    and not (self.verify_checksums and fold(
                                        ones_sum(memoryview(packet)[12:total]) + _TCP + total
                                        - 20))):
                                self._rx4 += 1  # rx_packets (see Stack.counters)
                                if self._peer_keys.get(src) is not peer_key:
                                    self._remember_peer(src, peer_key)
                                now = self.clock.seconds()
                                # FastPath.input, inlined (every request of a
                                # keep-alive exchange): the same checks, the
                                # header read from the packet, the payload
                                # sliced from its bytes (delivered uncopied)
                                if total >= 52:
                                    seq, ack, off, flags, wnd, opt, ts_val, ts_ecr = \
                                        _TCP32_FIELDS(packet, 24)
                                else:
                                    seq, ack, off, flags, wnd = _TCP20_TAIL(packet, 24)
                                    opt = ts_val = ts_ecr = 0
                                conn = fast.table.get((src, ports)) \
                                    if flags & 0xF7 == _ACK_ONLY else None
                                hlen = 0
                                if conn is not None and conn.local is local \
                                        and conn.state == _ESTABLISHED:
                                    off &= 0xF0
                                    if conn.ts_ok:
                                        if off == 0x80 and opt == _TS_WORD:
                                            hlen = 32
                                    elif off == 0x50:
                                        hlen = 20
                                        ts_val = ts_ecr = None
                                if hlen:
                                    layer = fast.layer
                                    layer._in_input = True
                                    try:
                                        done = conn.predicted(seq, ack, wnd, ts_val, ts_ecr,
                                                              packet[20 + hlen:total], 1, now)
                                    except Exception as e:
                                        layer._in_input = False
                                        fast.failed(conn, e)
                                        continue
                                    layer._in_input = False
                                    if done:
                                        fast.hits += 1  # tcp_segments_in (FastPath.fold)
                                        continue
                                # (the batch's wakeup follows the loop)
                                self._tcp_one(src, local, memoryview(packet)[20:total],
                                              peer_key, now, False)
                                continue
                        elif look and h != 0x45:
                            self._coalescing = True
                        input4(memoryview(packet), peer_key)
                    except Exception:
                        self._counters["error_internal"] += 1
                        log.failure("netstack: unexpected error handling an inbound packet")
                else:
                    if look:
                        self._coalescing = True
                    self.packetReceived(packet, peer_key)
            if self._coalescing:
                self._coalescing = False
                self.coalescer.flush()
        except Exception:
            self._counters["error_internal"] += 1
            log.failure("netstack: unexpected error handling an inbound batch")
        finally:
            self._coalescing = False
            if outer:
                self._batch_wakeup = False
                # wakeup, inlined for its common case: the timer is armed at or
                # before the first entry of TCP's heap and no reassembly or
                # ping waits (anything else: wakeup itself).  A stale or
                # closed first entry needs nothing either: every live deadline
                # is at or after it (the timer then fires early and re-arms, as
                # wakeup's own early timers do)
                timer_at = self._timer_at
                try:
                    heap = self.tcp._heap
                except AttributeError:  # a TCP layer of another kind (tests): ask it
                    heap = None
                if timer_at is None or not heap or timer_at > heap[0][0] or self._closed \
                        or self.fragments.table or self.icmp.pending_pings:
                    self.wakeup()
            # uncork(), inlined
            depth = self._cork_depth = self._cork_depth - 1
            if depth <= 0:
                out = self._corked
                if out:
                    self._corked = []
                    sent = self.sender.sendPackets(out)
                    if sent < len(out):
                        self._counters["tx_refused"] += len(out) - sent

    def packetReceived(self, packet: bytes, peer_key: bytes) -> None:
        """IPacketSink: one decrypted IP packet from peer ``peer_key``."""
        if self._closed:
            self._counters["drop_closed"] += 1
            return
        try:
            mv = memoryview(packet)
            if not mv:
                self._counters["drop_empty"] += 1
                return
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            v = mv[0] >> 4
            if v == 4:
                self._input4(mv, peer_key)
            elif v == 6:
                self._input6(mv, peer_key)
            else:
                self._counters["drop_bad_version"] += 1
        except Exception:
            self._counters["error_internal"] += 1
            log.failure("netstack: unexpected error handling an inbound packet")

    def _input4(self, mv: memoryview, peer_key: bytes) -> None:
        """One IPv4 packet.  :meth:`packetsReceived` runs the common
        case (an in-order segment of an established connection) inline and
        hands everything else here."""
        c = self._counters
        n = len(mv)
        if n >= 20 and mv[0] == 0x45:
            # wire.ipv4_parse for a header without options: the same checks
            # in the same order, the same drop reasons
            _vihl, _tos, total, ident, ff, _ttl, proto, _ck, src, dst = _IP4_HDR(mv)
            if total < 20 or total > n:
                c["drop_ip4_truncated"] += 1
                return
            # fold(ones_sum(header)) != 0: the header as three ints at 16-bit
            # word boundaries, whose sum is congruent to its words' modulo 0xFFFF
            a, b, v = _IP4_THIRDS(mv)
            v += a + b
            if not v or v % 0xFFFF:
                c["drop_ip4_bad_checksum"] += 1
                return
            hl = 20
        else:
            try:
                hl, total, ident, ff, _ttl, proto, src, dst = _ipv4_parse(mv)
            except WireError as e:
                c[e.reason] += 1
                return
        self._rx4 += 1  # rx_packets (see Stack.counters)
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
                return
            self._tcp_one(src, local, mv[20:total], peer_key, now)
            return
        self._transport(src, dst, local, proto, mv[hl:total], mv[:total], peer_key, now)

    def _input6(self, mv: memoryview, peer_key: bytes) -> None:
        c = self._counters
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
        c = self._counters
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
                 now: float, fused: bool = True) -> None:
        """One accepted TCP segment: the fused fast path (``tcp_fast.py``) for
        the predicted segment of an established connection (unless ``fused``
        is False: the caller tried it), else the filter (new connections),
        then TCP."""
        fast = self._tcp_fast
        if fused and fast is not None and fast.input(src, local, seg, now):
            if not self._batch_wakeup:
                self.wakeup()
            return
        f = self.filter
        if f.active and seg[13] & 0x12 == 0x02 and not f.allows(
            src, _TCP, (seg[2] << 8) | seg[3], peer_key
        ):
            self._counters["drop_filtered"] += 1
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
        self._counters["drop_not_local"] += 1
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


def _one_flow_twice(packets: list[bytes]) -> bool:
    """Whether coalescing can merge anything in this batch: two consecutive
    packets of one IPv4 flow (source, destination and the first transport
    word: TCP's ports); any other packet (IPv6, IPv4 options) says yes, as
    before this check.  A batch of requests on different connections (one
    segment each) skips the coalescer, which would only hand each segment on
    alone, one packet later; what TCP receives is the same either way."""
    prev = None
    for packet in packets:
        if not packet or packet[0] != 0x45:
            return True
        key = packet[12:24]
        if key == prev:
            return True
        prev = key
    return False


_V6_BAD_SOURCES = frozenset((bytes(16), bytes(15) + b"\x01"))  # ::, ::1
