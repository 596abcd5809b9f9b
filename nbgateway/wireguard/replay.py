"""Sliding-window replay filter for transport counters (RFC 6479 ring of bit
blocks, as wireguard-go's ``replay.Filter``), with an in-order shortcut.

The window accepts any counter not seen before that is within
``REPLAY_WINDOW_SIZE`` (8128) of the highest counter accepted so far.  Check with
:meth:`ReplayFilter.would_accept` before the (costly) decryption, and commit with
:meth:`ReplayFilter.validate` only after the packet authenticated.

In-order traffic is the common case, so the ring is allowed to lag: every
counter in ``(synced, last]`` is accepted without its bit being set yet (the
data path accepts ``counter == last + 1`` by just advancing ``last``, see
:meth:`ReplayFilter.accept_next`).  Any other counter first writes that run into
the ring (:meth:`_sync`, a few block writes per 64 packets) and then takes the
RFC 6479 path.  The result is exactly the filter that had validated every
counter one by one.
"""

from __future__ import annotations

from nbgateway.wireguard.constants import (
    REJECT_AFTER_MESSAGES,
    REPLAY_RING_BLOCKS,
    REPLAY_WINDOW_SIZE,
)

_BLOCK_SHIFT = 6  # 64-bit blocks
_BIT_MASK = 63
_FULL = (1 << 64) - 1
_RING_MASK = REPLAY_RING_BLOCKS - 1


class ReplayFilter:
    __slots__ = ("last", "ring", "synced")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.last = -1  # highest accepted counter (-1: none yet)
        self.synced = -1  # the ring holds every accepted counter up to here
        self.ring = [0] * REPLAY_RING_BLOCKS

    def accept_next(self, counter: int) -> bool:
        """The in-order shortcut: accept ``counter`` if it is ``last + 1``
        (what the data path inlines).  False means "use :meth:`validate`"."""
        if counter == self.last + 1 and counter < REJECT_AFTER_MESSAGES:
            self.last = counter
            return True
        return False

    def would_accept(self, counter: int) -> bool:
        """True if :meth:`validate` would accept ``counter`` now (no state change)."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        last = self.last
        if counter > last:
            return True
        if last - counter > REPLAY_WINDOW_SIZE or counter > self.synced:
            return False
        return not (
            self.ring[(counter >> _BLOCK_SHIFT) & _RING_MASK] >> (counter & _BIT_MASK) & 1
        )

    def _sync(self) -> None:
        """Write the in-order run ``(synced, last]`` into the ring, as if each
        of its counters had gone through :meth:`validate`."""
        lo, hi = self.synced + 1, self.last
        self.synced = hi
        if lo > hi:
            return
        ring = self.ring
        lo_block, hi_block = lo >> _BLOCK_SHIFT, hi >> _BLOCK_SHIFT
        if lo_block == hi_block:
            bits = (_FULL >> (63 - (hi & _BIT_MASK))) & (_FULL << (lo & _BIT_MASK))
            if lo & _BIT_MASK == 0:  # entering a fresh block: stale bits go
                ring[lo_block & _RING_MASK] = bits
            else:
                ring[lo_block & _RING_MASK] |= bits
            return
        # the first block's tail, full blocks in between, the last block's head
        # (a block entered afresh drops whatever its slot held)
        if lo & _BIT_MASK:
            ring[lo_block & _RING_MASK] |= (_FULL << (lo & _BIT_MASK)) & _FULL
        else:
            ring[lo_block & _RING_MASK] = _FULL
        for block in range(max(lo_block + 1, hi_block - REPLAY_RING_BLOCKS + 1), hi_block):
            ring[block & _RING_MASK] = _FULL
        ring[hi_block & _RING_MASK] = _FULL >> (63 - (hi & _BIT_MASK))

    def validate(self, counter: int) -> bool:
        """Accept ``counter`` (and remember it) or reject it as replayed/too old."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        if self.accept_next(counter):
            return True
        if self.synced != self.last:
            self._sync()
        ring = self.ring
        block = counter >> _BLOCK_SHIFT
        if counter > self.last:
            current = self.last >> _BLOCK_SHIFT
            diff = block - current
            if diff > REPLAY_RING_BLOCKS:
                diff = REPLAY_RING_BLOCKS
            for i in range(current + 1, current + diff + 1):
                ring[i & _RING_MASK] = 0
            self.last = self.synced = counter
        elif self.last - counter > REPLAY_WINDOW_SIZE:
            return False
        index = block & _RING_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = ring[index]
        if old & bit:
            return False
        ring[index] = old | bit
        return True
