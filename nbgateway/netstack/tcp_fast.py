"""The fused receive fast path for the common TCP segment (issue #20).

A keep-alive exchange's inbound segment is nearly always the predicted one:
an ESTABLISHED connection, the next in-order sequence number, only ACK (and
PSH), either no options or exactly the aligned timestamp option (NOP NOP TS)
when the connection uses timestamps, the same window.  The general path
builds a :class:`~nbgateway.netstack.tcp_wire.Segment` (header parse, option
walk), looks the connection up by a tuple of ``ipaddress`` objects (two
Python-level ``__hash__`` calls), and reaches header prediction
(``Connection._fast_path``) through the layer's dispatch and guard.

:class:`FastPath` takes the segment as the stack accepted it (raw source
address, the stack's local address object, the segment's memoryview): one
``struct`` unpack of the header (and timestamp option), a lookup in a table
keyed by ``(raw remote address, ports word)``, and then
``Connection.predicted`` -- the very same header-prediction body the general
path runs, so the outcome is identical.  Anything it does not recognise
(another flag, another option layout, another state, a table miss or a
connection bound to another local address) returns False *before touching
anything*, and the stack hands the segment to the general path.

The table (:attr:`FastPath.table`) is maintained by
:class:`~nbgateway.netstack.tcp.TCPLayer` next to its ``conns`` dict (add on
creation, remove with the connection) and is bounded by it.  ``enabled``
(default from ``NBGW_NETSTACK_FASTPATH``, ``0`` disables) switches the fused
path off for A/B tests and benches.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any

from nbgateway.netstack.checksum import ones_sum
from nbgateway.netstack.tcp_const import ESTABLISHED

if TYPE_CHECKING:
    from nbgateway.netstack.tcp_conn import Connection

#: ports word, seq, ack, data offset byte, flags, window
_H20 = struct.Struct("!IIIBBH")
#: the same plus checksum, urgent pointer, the option word and both timestamps
_H32 = struct.Struct("!IIIBBHHHIII")
_TS_WORD = 0x0101080A  # NOP NOP kind 8 length 10
_ACK = 0x10
_OFF20 = 5 << 4
_OFF32 = 8 << 4
_MASK = 0xFFFFFFFF
_PROTO_TCP = 6
_IP4_DF = 0x4000
#: the constant words of the fused output's IPv4 header checksum (version and
#: header length, DF, the header's 20 bytes, the protocol) and of the TCP
#: checksum's data offset (8 words) plus the NOP NOP kind length word pair
_IP4_HDR_WORDS = 0x4500 + _IP4_DF + 20 + _PROTO_TCP
_TS_WORDS = 0x8000 + 0x0101 + 0x080A
#: IPv4 header (no options), then the TCP header (20 bytes) with or without
#: the aligned timestamp option; IPv6 likewise (version/class/flow word first)
_O4 = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")
_O4TS = struct.Struct("!BBHHHBBH4s4sHHIIBBHHHIII")
_O6 = struct.Struct("!IHBB16s16sHHIIBBHHH")
_O6TS = struct.Struct("!IHBB16s16sHHIIBBHHHIII")

FastKey = tuple[bytes, int]
_from_bytes = int.from_bytes
#: payloads longer than this are summed as two ints (``_payload_sum``): the
#: time crossover measured on CPython 3.11 (timeit, 192-640 bytes: one int
#: faster up to ~448, the split faster from ~512)
SPLIT_SUM_ABOVE = 448


def default_enabled() -> bool:
    return os.environ.get("NBGW_NETSTACK_FASTPATH", "1") != "0"


def fast_key(remote_raw: bytes, rport: int, lport: int) -> FastKey:
    """The table key of a connection: what the segment's source address and
    first header word give for it."""
    return (remote_raw, (rport << 16) | lport)


class FastPath:
    """Connection table by raw address bytes plus the fused input (which
    ``StackInput._input4`` runs inline for an option-less IPv4 header: keep
    the two the same)."""

    __slots__ = ("_emits_folded", "_hits_folded", "counters", "emits", "enabled", "hits",
                 "layer", "stack", "table")

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.counters = layer.counters
        # the fused output writes the IP header itself: only for the real IP
        # layer (Stack.fused_tcp_output), whose ident, cork and counters it uses
        self.stack: Any = layer.stack if getattr(layer.stack, "fused_tcp_output", False) \
            else None
        self.table: dict[FastKey, Connection] = {}
        self.enabled = default_enabled()
        #: segments taken by :meth:`input` and sent by :func:`emit`; what the
        #: stack counts as ``tcp_segments_in`` / ``tcp_segments_out`` and
        #: ``tx_packets`` for them is added by :meth:`fold`
        self.hits = 0
        self.emits = 0
        self._hits_folded = self._emits_folded = 0

    def fold(self, counters: Any) -> None:
        """Add the segments counted in ``hits``/``emits`` since the last fold
        to the stack's ``counters`` (``Stack.counters`` calls this on every
        read; the hot paths only increment the two ints)."""
        d = self.hits - self._hits_folded
        if d:
            counters["tcp_segments_in"] += d
            self._hits_folded = self.hits
        d = self.emits - self._emits_folded
        if d:
            counters["tcp_segments_out"] += d
            counters["tx_packets"] += d
            self._emits_folded = self.emits

    def add(self, conn: Connection) -> None:
        self.table[fast_key(conn.raw_addrs[1], conn.rport, conn.lport)] = conn

    def discard(self, conn: Connection) -> None:
        key = fast_key(conn.raw_addrs[1], conn.rport, conn.lport)
        if self.table.get(key) is conn:
            del self.table[key]

    def input(self, src: bytes, local: Any, seg: memoryview, now: float) -> bool:
        """One IP-validated TCP segment from ``src`` to ``local``: True if it
        was handled as the predicted segment, False (nothing touched) if the
        general path must take it."""
        if not self.enabled:
            return False
        n = len(seg)
        if n >= 32:
            ports, seq, ack, off, flags, wnd, _c, _u, opt, ts_val, ts_ecr = _H32.unpack_from(seg)
        elif n >= 20:
            ports, seq, ack, off, flags, wnd = _H20.unpack_from(seg)
            opt = ts_val = ts_ecr = 0
        else:
            return False
        if flags & 0xF7 != _ACK:
            return False  # anything but ACK (+PSH): SYN, FIN, RST, URG, ECE, CWR
        conn = self.table.get((src, ports))
        if conn is None or conn.local is not local or conn.state != ESTABLISHED:
            return False
        off &= 0xF0
        if conn.ts_ok:
            if off != _OFF32 or opt != _TS_WORD:
                return False
            hlen = 32
        elif off == _OFF20:
            hlen = 20
            ts_val = ts_ecr = None  # type: ignore[assignment]
        else:
            return False
        layer = self.layer
        layer._in_input = True
        try:
            done = conn.predicted(seq, ack, wnd, ts_val, ts_ecr, seg[hlen:], 1, now)
        except Exception as e:
            layer._in_input = False
            self.failed(conn, e)
            return True
        layer._in_input = False
        if done:
            self.hits += 1  # tcp_segments_in (fold)
        return done

    def failed(self, conn: Connection, e: Exception) -> None:
        """``Connection.predicted`` raised ``e`` (a bug) on a fused input
        (:meth:`input`, or the stack's inline copy of it): as
        ``TCPLayer._guarded``, that resets one connection; the segment counts."""
        self.layer._guarded(conn, _raise, e)
        self.counters["tcp_segments_in"] += 1


def _raise(e: Exception) -> None:
    raise e


def _payload_sum(payload: bytes | memoryview, n: int) -> int:
    """The one's-complement sum of ``n`` payload bytes as a small int (below
    2**24; unfolded, for a sum of small ints that is folded once).  The
    payload read as one big int is congruent to that sum modulo 0xFFFF
    (2**16 is 1 modulo 0xFFFF); a modulo costs a hardware division per
    30-bit digit, so above ``SPLIT_SUM_ABOVE`` bytes the payload is read as
    two ints, the second of an even number of bytes (so the first's weight
    is a power of 2**16), and their sum, about half as long, is reduced: the
    shift, mask and add a fold of the one int would cost are not needed.
    Below that the two slices and the second call cost more time than the
    divisions they save (and always more instructions: a division is one)."""
    if n > SPLIT_SUM_ABOVE:
        h = n - ((n >> 2) << 1)
        v = (_from_bytes(payload[:h], "big") + _from_bytes(payload[h:], "big")) % 0xFFFF
    else:
        v = _from_bytes(payload, "big") % 0xFFFF
    return v << 8 if n & 1 else v  # an odd length: zero padded (times 256, mod 0xFFFF)


def _out_sums(conn: Connection) -> tuple[int, int, bool]:
    """Per-connection constants of the fused output: the TCP checksum's
    pseudo-header address sum plus protocol and ports, the IP header's
    address sum, and the address family."""
    local, remote = conn.raw_addrs
    addr = ones_sum(local) + ones_sum(remote)
    consts = (addr + _PROTO_TCP + conn.lport + conn.rport, addr, len(local) == 4)
    conn.fast_out = consts
    return consts


def emit(fast: FastPath, conn: Connection, seq: int, flags: int, wnd: int,
         payload: bytes | memoryview, ts_val: int | None, ts_ecr: int) -> bool:
    """Emit one TCP segment of ``conn`` with no option other than the aligned
    timestamp (``ts_val`` None: none) as one packed IP + TCP header plus the
    payload: the bytes ``build_segment`` -> ``TCPLayer.output`` ->
    ``Stack.send_transport`` -> ``Stack.send_ip`` would produce (same
    checksums, same IP ident sequence, same counters (through
    :meth:`FastPath.fold`), same cork).  Returns
    False, having done nothing, when that path must run instead (disabled,
    not a real :class:`Stack`, a closed stack or a packet over the MTU, whose
    drop the general path counts)."""
    stack = fast.stack
    if stack is None or not fast.enabled or stack._closed:
        return False
    n = len(payload)
    tcp_len = n + (20 if ts_val is None else 32)
    consts = conn.fast_out or _out_sums(conn)
    tcp_sum, addr_sum, v4 = consts
    if (tcp_len + 20 if v4 else tcp_len + 40) > stack.mtu:
        return False
    # relative to ISS / IRS (tcp_conn.py) back to wire values, masked only
    # when over 32 bits (a compare allocates nothing, ``& _MASK`` does)
    seq += conn.iss
    if seq > _MASK:
        seq &= _MASK
    ack = conn.rcv_nxt + conn.irs
    if ack > _MASK:
        ack &= _MASK
    # checksums: unfolded sums (checksum.py) of small ints, folded once; every
    # total here is positive, for which ``fold(total) == -total % 0xFFFF``
    # (a 32-bit field is added whole: it is congruent to the sum of its two
    # 16-bit words modulo 0xFFFF, and only the residue matters)
    total = tcp_sum + tcp_len + seq + ack + flags + wnd
    if n:
        # _payload_sum, inlined
        if n > SPLIT_SUM_ABOVE:
            h = n - ((n >> 2) << 1)
            v = (_from_bytes(payload[:h], "big") + _from_bytes(payload[h:], "big")) % 0xFFFF
        else:
            v = _from_bytes(payload, "big") % 0xFFFF
        total += v << 8 if n & 1 else v
    local, remote = conn.raw_addrs
    ttl = stack.ttl
    if v4:
        ident = stack._ident = (stack._ident + 1) & 0xFFFF
        hck = -(addr_sum + tcp_len + ident + (ttl << 8) + _IP4_HDR_WORDS) % 0xFFFF
        if ts_val is None:
            ck = -(total + 0x5000) % 0xFFFF
            hdr = _O4.pack(0x45, 0, 20 + tcp_len, ident, _IP4_DF, ttl, _PROTO_TCP, hck,
                           local, remote, conn.lport, conn.rport, seq, ack, 0x50, flags, wnd,
                           ck, 0)
        else:
            ck = -(total + ts_val + ts_ecr + _TS_WORDS) % 0xFFFF
            hdr = _O4TS.pack(0x45, 0, 20 + tcp_len, ident, _IP4_DF, ttl, _PROTO_TCP, hck,
                             local, remote, conn.lport, conn.rport, seq, ack, 0x80, flags, wnd,
                             ck, 0, _TS_WORD, ts_val, ts_ecr)
    elif ts_val is None:
        ck = -(total + 0x5000) % 0xFFFF
        hdr = _O6.pack(0x60000000, tcp_len, _PROTO_TCP, ttl, local, remote, conn.lport,
                       conn.rport, seq, ack, 0x50, flags, wnd, ck, 0)
    else:
        ck = -(total + ts_val + ts_ecr + _TS_WORDS) % 0xFFFF
        hdr = _O6TS.pack(0x60000000, tcp_len, _PROTO_TCP, ttl, local, remote, conn.lport,
                         conn.rport, seq, ack, 0x80, flags, wnd, ck, 0, _TS_WORD, ts_val,
                         ts_ecr)
    fast.emits += 1  # tcp_segments_out and tx_packets (FastPath.fold)
    packet = hdr + payload if n else hdr
    if stack._cork_depth:
        stack._corked.append(packet)
    elif not stack.sender.sendPacket(packet):  # as uncork() would hand it over
        fast.counters["tx_refused"] += 1
    return True
