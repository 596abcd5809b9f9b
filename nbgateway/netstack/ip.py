"""IP-layer state: bounded fragment reassembly and the address cache.

Fragment reassembly (IPv4, RFC 791 3.2 / RFC 815; IPv6, RFC 8200 4.5):

* A datagram is keyed by (source, destination, protocol, identification)
  for IPv4 and (source, destination, identification) for IPv6.
* Bounds (all per stack, defaults below): at most ``max_datagrams`` (64)
  datagrams in reassembly, ``max_bytes`` (256 KiB) of fragment data held in
  total, ``max_fragments`` (64) fragments per datagram, and a reassembled
  size of at most 65535 bytes.  A fragment that would exceed the datagram or
  byte bound is dropped (``drop_frag_table_full`` / ``drop_frag_memory``);
  existing datagrams are never evicted early, so a flood cannot push out a
  datagram that is about to complete but can delay new ones for at most
  ``timeout``.
* ``timeout`` (30 s, as Linux ``ipfrag_time``) counts from the first
  fragment and is not extended by later ones; expiry drops the datagram
  (``frag_timeout``).  No ICMP Time Exceeded is sent.
* Overlapping fragments discard the whole datagram (``drop_frag_overlap``,
  RFC 5722 behaviour applied to both families); an exact duplicate of a
  received fragment is ignored (``frag_duplicate``).  Non-final fragments
  must carry a multiple of 8 bytes; inconsistent final lengths drop the
  datagram (``drop_frag_inconsistent``).

Deadlines are the first-arrival time plus a constant, so dict insertion
order is deadline order and :meth:`Reassembler.next_deadline` is O(1).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_DATAGRAM = 65535


class _Pending:
    __slots__ = ("deadline", "pieces", "protocol", "size", "total")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.pieces: list[tuple[int, int, bytes]] = []
        self.total: int | None = None
        self.size = 0
        self.protocol = -1


class Reassembler:
    """Bounded fragment reassembly table (one per stack, both families)."""

    def __init__(
        self, counters: Counter[str], *, max_datagrams: int = 64, max_bytes: int = 256 * 1024,
        max_fragments: int = 64, timeout: float = 30.0,
    ) -> None:
        self.counters = counters
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.max_fragments = max_fragments
        self.timeout = timeout
        self.table: dict[Any, _Pending] = {}
        self.bytes_held = 0

    def __len__(self) -> int:
        return len(self.table)

    def add(
        self, key: Any, offset: int, more: bool, data: memoryview | bytes, now: float,
        protocol: int = -1,
    ) -> tuple[int, bytes] | None:
        """Add one fragment.  ``offset`` is in bytes; ``protocol`` is the
        upper-layer protocol this fragment announces (IPv6: only meaningful
        for offset 0).  Returns ``(protocol, payload)`` once the datagram is
        complete, else None."""
        c = self.counters
        n = len(data)
        end = offset + n
        if end > MAX_DATAGRAM:
            c["drop_frag_too_big"] += 1
            self._discard(key)
            return None
        if more and (n == 0 or n & 7):
            c["drop_frag_bad_length"] += 1
            return None
        p = self.table.get(key)
        if p is None:
            if len(self.table) >= self.max_datagrams:
                c["drop_frag_table_full"] += 1
                return None
            p = self.table[key] = _Pending(now + self.timeout)
            c["frag_datagrams"] += 1
        if self.bytes_held + n > self.max_bytes:
            c["drop_frag_memory"] += 1
            if not p.pieces:
                del self.table[key]
            return None
        if not more:
            if (p.total is not None and p.total != end) or any(e > end for _s, e, _d in p.pieces):
                c["drop_frag_inconsistent"] += 1
                self._discard(key)
                return None
            p.total = end
        elif p.total is not None and end > p.total:
            c["drop_frag_inconsistent"] += 1
            self._discard(key)
            return None
        for s, e, _d in p.pieces:
            if s < end and offset < e:
                if s == offset and e == end:
                    c["frag_duplicate"] += 1
                    return None
                c["drop_frag_overlap"] += 1
                self._discard(key)
                return None
        if len(p.pieces) >= self.max_fragments:
            c["drop_frag_too_many"] += 1
            self._discard(key)
            return None
        p.pieces.append((offset, end, bytes(data)))
        p.size += n
        self.bytes_held += n
        if offset == 0:
            p.protocol = protocol
        c["frag_received"] += 1
        if p.total is None or p.size != p.total:
            return None
        # complete: pieces do not overlap and cover total bytes
        del self.table[key]
        self.bytes_held -= p.size
        p.pieces.sort()
        c["frag_reassembled"] += 1
        return p.protocol, b"".join(d for _s, _e, d in p.pieces)

    def _discard(self, key: Any) -> None:
        p = self.table.pop(key, None)
        if p is not None:
            self.bytes_held -= p.size

    def next_deadline(self) -> float | None:
        for p in self.table.values():
            return p.deadline
        return None

    def expire(self, now: float) -> int:
        """Drop datagrams whose timeout passed; returns how many."""
        expired = 0
        table = self.table
        while table:
            key = next(iter(table))
            p = table[key]
            if p.deadline > now:
                break
            del table[key]
            self.bytes_held -= p.size
            expired += 1
        if expired:
            self.counters["frag_timeout"] += expired
        return expired


class AddressCache:
    """Bounded map from raw 4/16-byte addresses to ``ipaddress`` objects and
    their text form, so the per-packet path does not build objects.  When
    full it is simply cleared (a flood of spoofed sources costs one rebuild
    per ``limit`` packets, memory stays bounded)."""

    __slots__ = ("_obj", "_text", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._obj: dict[bytes, IPAddress] = {}
        self._text: dict[bytes, str] = {}

    def __len__(self) -> int:
        return len(self._obj)

    def obj(self, raw: bytes) -> IPAddress:
        a = self._obj.get(raw)
        if a is None:
            if len(self._obj) >= self.limit:
                self._obj.clear()
            a = self._obj[raw] = ipaddress.ip_address(raw)
        return a

    def text(self, raw: bytes) -> str:
        t = self._text.get(raw)
        if t is None:
            if len(self._text) >= self.limit:
                self._text.clear()
            t = self._text[raw] = str(ipaddress.ip_address(raw))
        return t
