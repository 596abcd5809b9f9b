"""Receive-side coalescing of in-order TCP segments within one packet batch
(what Linux calls GRO), owned by :class:`~nbgateway.netstack.stack.Stack`.

The WireGuard device hands the stack a *run* of packets from one peer (one
socket read's worth).  A bulk sender's run is mostly consecutive full
segments of one connection; handing each to the TCP state machine costs a
header parse, a connection lookup, the RFC 9293 checks, a delivery to the
application and a timer re-arm.  :class:`TCPCoalescer` instead collects
consecutive segments that

* belong to the same connection (source address and both ports),
* carry only ACK (PSH is ignored, as by our receiver anyway) and a payload,
* have a plain 20-byte header or the aligned timestamp option
  (NOP NOP TS, 32 bytes) -- any other option (SACK, ...) is not merged,
* continue exactly where the previous one ended (``seq``), with the same
  acknowledgment number and window,

and delivers them as **one** segment: the first segment's header (so its
timestamp, the oldest, is what PAWS and ``TS.Recent`` see, RFC 7323 4.3)
with the concatenated payloads, plus the number of segments it stands for
(the receiver counts that many toward its ACK policy).  Anything else first
flushes the pending run and is delivered on its own, so the order of
segments across connections is kept.  A run is bounded by ``max_bytes`` (64
KiB) and by the batch: :meth:`flush` is called at the end of every batch, so
nothing is held across reactor turns.

Coalescing happens only after the IP layer accepted each packet (header,
local destination, checksum when verified), so it changes how many calls
the TCP layer gets, never what it accepts.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

#: ports (as one word), seq, ack, data offset byte, flags, window
_HDR = struct.Struct("!IIIBBH")
_TS_ALIGNED = b"\x01\x01\x08\x0a"
_ACK = 0x10
_MASK = 0xFFFFFFFF
MAX_RUN_BYTES = 64 * 1024

#: deliver one segment as received: (src raw, local address, segment, peer key, now)
DeliverOne = Callable[[bytes, Any, memoryview, bytes, float], None]
#: deliver a run: (src raw, local address, header, joined payload, segments, now)
DeliverRun = Callable[[bytes, Any, memoryview, bytes, int, float], None]


class TCPCoalescer:
    """The pending run of one batch (see the module docstring)."""

    __slots__ = (
        "_ack",
        "_bytes",
        "_count",
        "_first",
        "_hlen",
        "_local",
        "_next",
        "_now",
        "_one",
        "_payloads",
        "_peer_key",
        "_ports",
        "_run",
        "_src",
        "_wnd",
        "max_bytes",
        "merged",
        "runs",
    )

    def __init__(self, one: DeliverOne, run: DeliverRun, max_bytes: int = MAX_RUN_BYTES) -> None:
        self._one = one
        self._run = run
        self.max_bytes = max_bytes
        self._count = 0
        self._first: memoryview | None = None
        self._payloads: list[memoryview] = []
        self._src = b""
        self._local: Any = None
        self._peer_key = b""
        self._ports = self._ack = self._wnd = self._hlen = self._next = self._bytes = 0
        self._now = 0.0
        self.runs = 0  # runs of two or more segments delivered as one
        self.merged = 0  # segments that went into such runs

    def add(self, src: bytes, local: Any, seg: memoryview, peer_key: bytes, now: float) -> None:
        """One IP-validated TCP segment (``seg``: header and payload)."""
        ports, seq, ack, off, flags, wnd = _HDR.unpack_from(seg)
        hlen = (off >> 4) << 2
        plen = len(seg) - hlen
        if (flags & 0xF7) != _ACK or plen <= 0 or (
            hlen != 20 and (hlen != 32 or seg[20:24] != _TS_ALIGNED)
        ):
            if self._count:
                self.flush()
            self._one(src, local, seg, peer_key, now)
            return
        count = self._count
        if count:
            if (seq == self._next and ports == self._ports and src == self._src
                    and ack == self._ack and wnd == self._wnd and hlen == self._hlen
                    and self._bytes + plen <= self.max_bytes):
                if count == 1:
                    self._payloads = [self._first[hlen:]]  # type: ignore[index]
                self._payloads.append(seg[hlen:])
                self._next = (seq + plen) & _MASK
                self._bytes += plen
                self._count = count + 1
                return
            if count == 1:
                # flush() of a lone segment, inlined (a batch of requests on
                # different connections: every segment ends the previous run)
                first, self._first = self._first, None
                self._count = 0
                self._one(self._src, self._local, first, self._peer_key,  # type: ignore[arg-type]
                          self._now)
            else:
                self.flush()
        self._count = 1
        self._first = seg
        self._src, self._local, self._peer_key, self._now = src, local, peer_key, now
        self._ports, self._ack, self._wnd, self._hlen = ports, ack, wnd, hlen
        self._next = (seq + plen) & _MASK
        self._bytes = plen

    def flush(self) -> None:
        """Deliver the pending run (if any)."""
        count = self._count
        if not count:
            return
        self._count = 0
        first, self._first = self._first, None
        payloads, self._payloads = self._payloads, []
        assert first is not None
        if count == 1:  # (its payload list was never built)
            self._one(self._src, self._local, first, self._peer_key, self._now)
            return
        self.runs += 1
        self.merged += count
        self._run(self._src, self._local, first[: self._hlen], b"".join(payloads), count,
                  self._now)
