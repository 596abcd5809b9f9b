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

FastKey = tuple[bytes, int]


def default_enabled() -> bool:
    return os.environ.get("NBGW_NETSTACK_FASTPATH", "1") != "0"


def fast_key(remote_raw: bytes, rport: int, lport: int) -> FastKey:
    """The table key of a connection: what the segment's source address and
    first header word give for it."""
    return (remote_raw, (rport << 16) | lport)


class FastPath:
    """Connection table by raw address bytes plus the fused input."""

    __slots__ = ("counters", "enabled", "hits", "layer", "table")

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.counters = layer.counters
        self.table: dict[FastKey, Connection] = {}
        self.enabled = default_enabled()
        self.hits = 0

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
        except Exception as e:  # as TCPLayer._guarded: a bug resets one connection
            layer._in_input = False
            layer._guarded(conn, _raise, e)
            self.counters["tcp_segments_in"] += 1
            return True
        layer._in_input = False
        if done:
            self.counters["tcp_segments_in"] += 1
            self.hits += 1
        return done


def _raise(e: Exception) -> None:
    raise e
