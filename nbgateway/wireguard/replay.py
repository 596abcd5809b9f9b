"""Sliding-window replay filter for transport counters (RFC 6479 ring of bit
blocks, as wireguard-go's ``replay.Filter``).

The window accepts any counter not seen before that is within
``REPLAY_WINDOW_SIZE`` (8128) of the highest counter accepted so far.  Check with
:meth:`ReplayFilter.would_accept` before the (costly) decryption, and commit with
:meth:`ReplayFilter.validate` only after the packet authenticated.
"""

from __future__ import annotations

from nbgateway.wireguard.constants import (
    REJECT_AFTER_MESSAGES,
    REPLAY_RING_BLOCKS,
    REPLAY_WINDOW_SIZE,
)

_BLOCK_SHIFT = 6  # 64-bit blocks
_BIT_MASK = 63
_RING_MASK = REPLAY_RING_BLOCKS - 1


class ReplayFilter:
    __slots__ = ("last", "ring")

    def __init__(self) -> None:
        self.last = 0
        self.ring = [0] * REPLAY_RING_BLOCKS

    def reset(self) -> None:
        self.last = 0
        self.ring = [0] * REPLAY_RING_BLOCKS

    def would_accept(self, counter: int) -> bool:
        """True if :meth:`validate` would accept ``counter`` now (no state change)."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        if counter > self.last:
            return True
        if self.last - counter > REPLAY_WINDOW_SIZE:
            return False
        return not (
            self.ring[(counter >> _BLOCK_SHIFT) & _RING_MASK] >> (counter & _BIT_MASK) & 1
        )

    def validate(self, counter: int) -> bool:
        """Accept ``counter`` (and remember it) or reject it as replayed/too old."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        ring = self.ring
        block = counter >> _BLOCK_SHIFT
        if counter > self.last:
            current = self.last >> _BLOCK_SHIFT
            diff = block - current
            if diff > REPLAY_RING_BLOCKS:
                diff = REPLAY_RING_BLOCKS
            for i in range(current + 1, current + diff + 1):
                ring[i & _RING_MASK] = 0
            self.last = counter
        elif self.last - counter > REPLAY_WINDOW_SIZE:
            return False
        index = block & _RING_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = ring[index]
        if old & bit:
            return False
        ring[index] = old | bit
        return True
