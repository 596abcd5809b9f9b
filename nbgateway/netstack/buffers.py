"""Byte buffers for the TCP state machine: the send buffer (unacknowledged plus
unsent data) and the bounded out-of-order receive assembler (RFC 9293 3.10.7.4,
with the block bookkeeping needed for RFC 2018 SACK blocks).

Positions here are *unwrapped* sequence numbers (plain Python ints that never
wrap), so ordering is ordinary integer comparison.  Both buffers allocate
nothing until data arrives and drop their storage when empty, which keeps an
idle connection small.
"""

from __future__ import annotations

_COMPACT_AT = 64 * 1024


class SendBuffer:
    """Bytes from sequence number ``start`` onward, up to ``end`` (a plain
    attribute, read on every segment).  ``consume`` (on ACK) only moves a head
    index; the storage is compacted in large steps.  The storage is the
    appended ``bytes`` object itself while only one was appended (no copy),
    a bytearray from the second append on."""

    __slots__ = ("_buf", "_head", "end", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        #: sequence number just past the last buffered byte
        self.end = start
        self._buf: bytes | bytearray | None = None
        self._head = 0

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        buf = self._buf
        if buf is None:
            # an immutable ``bytes`` is kept as it is (a response written in
            # one piece is not copied); the next append makes a bytearray
            buf = self._buf = data if data.__class__ is bytes else bytearray(data)
        else:
            if buf.__class__ is bytes:
                buf = self._buf = bytearray(memoryview(buf)[self._head :])
                self._head = 0
            buf += data
        self.end = self.start + len(buf) - self._head  # bytes, whatever the view's format

    def consume_to(self, seq: int) -> int:
        """Drop bytes before ``seq`` (clamped to the buffer); return how many."""
        end = self.end
        if seq >= end:
            # everything acknowledged (the common case): release the storage
            n = end - self.start
            if n <= 0:
                return 0
            self.start = end
            self._buf = None
            self._head = 0
            return n
        n = seq - self.start
        if n <= 0:
            return 0
        self.start = seq
        self._head += n
        buf = self._buf
        assert buf is not None
        if self._head >= _COMPACT_AT and self._head * 2 >= len(buf):
            if buf.__class__ is bytes:
                self._buf = buf[self._head :]
            else:
                del buf[: self._head]
            self._head = 0
        return n

    def view(self, seq: int, n: int) -> memoryview:
        """Up to ``n`` bytes starting at sequence number ``seq``."""
        buf = self._buf
        if buf is None:
            return memoryview(b"")
        i = self._head + (seq - self.start)
        return memoryview(buf)[i : i + n]


class Assembler:
    """Out-of-order segments held until the hole before them fills.

    Blocks are disjoint, non-adjacent ``[start, start+len(data))`` ranges kept
    sorted.  Bounded by ``max_blocks`` (new disjoint ranges beyond that are
    refused) and implicitly by the receive window the caller enforces."""

    __slots__ = ("_blocks", "_stamp", "bytes", "max_blocks")

    def __init__(self, max_blocks: int = 32) -> None:
        # each block: [start, bytearray, recency stamp]
        self._blocks: list[list] = []
        self._stamp = 0
        self.bytes = 0
        self.max_blocks = max_blocks

    def __bool__(self) -> bool:
        return bool(self._blocks)

    def add(self, seq: int, data: bytes | memoryview) -> bool:
        """Store ``data`` at ``seq``; overlapping bytes already held win.
        Returns False if refused (too many blocks)."""
        end = seq + len(data)
        blocks = self._blocks
        self._stamp += 1
        # Fast path: extends the last block exactly (a run after one hole).
        if blocks:
            last = blocks[-1]
            last_end = last[0] + len(last[1])
            if seq == last_end:
                last[1] += data
                last[2] = self._stamp
                self.bytes += len(data)
                return True
        # Find blocks overlapping or adjacent to [seq, end).
        first = last_i = -1
        for i, blk in enumerate(blocks):
            b_start = blk[0]
            if b_start + len(blk[1]) < seq:
                continue
            if b_start > end:
                break
            if first < 0:
                first = i
            last_i = i
        if first < 0:
            if len(blocks) >= self.max_blocks:
                return False
            pos = 0
            while pos < len(blocks) and blocks[pos][0] < seq:
                pos += 1
            blocks.insert(pos, [seq, bytearray(data), self._stamp])
            self.bytes += len(data)
            return True
        lo_i, hi_i = first, last_i + 1
        merged = blocks[lo_i:hi_i]
        new_start = min(seq, merged[0][0])
        new_end = max(end, merged[-1][0] + len(merged[-1][1]))
        out = bytearray(new_end - new_start)
        out[seq - new_start : end - new_start] = data
        old = 0
        for blk in merged:
            s = blk[0] - new_start
            out[s : s + len(blk[1])] = blk[1]
            old += len(blk[1])
        blocks[lo_i:hi_i] = [[new_start, out, self._stamp]]
        self.bytes += len(out) - old
        return True

    def pop_at(self, seq: int) -> bytes | None:
        """If a block covers ``seq``, remove it and return its bytes from
        ``seq`` on; blocks entirely below ``seq`` are discarded."""
        blocks = self._blocks
        while blocks:
            start, data, _ = blocks[0]
            if start > seq:
                return None
            del blocks[0]
            self.bytes -= len(data)
            end = start + len(data)
            if end > seq:
                return bytes(memoryview(data)[seq - start :])
        return None

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` (left, right) ranges, the most recently changed
        first (RFC 2018 4: the first block reports the latest segment)."""
        ranked = sorted(self._blocks, key=lambda b: -b[2])[:limit]
        return [(b[0], b[0] + len(b[1])) for b in ranked]

    def clear(self) -> None:
        self._blocks = []
        self.bytes = 0
