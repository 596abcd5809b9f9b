"""TCP segment representation: header parse/emit and options (RFC 9293 3.1,
MSS RFC 9293 3.7.1, window scale and timestamps RFC 7323, SACK RFC 2018).

``parse_segment`` validates untrusted input and returns a :class:`Segment` (or
``None`` for a malformed header, which the caller counts and drops);
``build_segment`` emits a header with a zero checksum that the IP layer fills in
at offset 16.  Sequence numbers here are the 32-bit wire values; the state
machine unwraps them.
"""

from __future__ import annotations

import struct

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERM = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

MAX_WSCALE = 14  # RFC 7323 2.3
HEADER_LEN = 20
TS_OPTION_LEN = 12  # NOP NOP TS(10), the usual aligned layout

_HDR = struct.Struct("!HHIIBBHHH")
_II = struct.Struct("!II")
_TS_ALIGNED = b"\x01\x01\x08\x0a"
_TS_PACK = struct.Struct("!4sII")


class Segment:
    """One parsed TCP segment.  ``payload`` is a memoryview into the caller's
    buffer (copy it before keeping it past the call), or bytes for a run of
    coalesced segments, whose number is ``segs`` (1 for a segment as sent)."""

    __slots__ = (
        "ack",
        "dport",
        "flags",
        "mss",
        "payload",
        "sack_blocks",
        "sack_perm",
        "segs",
        "seq",
        "sport",
        "ts_ecr",
        "ts_val",
        "wnd",
        "wscale",
    )

    def __init__(self, sport: int, dport: int, seq: int, ack: int, flags: int, wnd: int,
                 payload: memoryview | bytes) -> None:
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.wnd = wnd
        self.payload = payload
        self.mss: int | None = None
        self.wscale: int | None = None
        self.sack_perm = False
        self.ts_val: int | None = None
        self.ts_ecr: int | None = None
        self.sack_blocks: tuple[tuple[int, int], ...] = ()
        self.segs = 1

    @property
    def seg_len(self) -> int:
        """SEG.LEN: payload plus one for each of SYN and FIN."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)

    def __repr__(self) -> str:
        names = "".join(n for bit, n in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"),
                                          (ACK, "."), (URG, "U")) if self.flags & bit)
        return (f"<Segment {self.sport}->{self.dport} [{names}] seq={self.seq} ack={self.ack} "
                f"wnd={self.wnd} len={len(self.payload)}>")


def parse_segment(data: bytes | bytearray | memoryview) -> Segment | None:
    """Parse and validate a TCP header (checksum already verified).  Returns
    ``None`` for a truncated header, a bad data offset or malformed options."""
    n = len(data)
    if n < HEADER_LEN:
        return None
    sport, dport, seq, ack, off, flags, wnd, _csum, _urg = _HDR.unpack_from(data)
    hlen = (off >> 4) << 2
    if hlen < HEADER_LEN or hlen > n or sport == 0 or dport == 0:
        return None
    view = data if isinstance(data, memoryview) else memoryview(data)
    seg = Segment(sport, dport, seq, ack, flags, wnd, view[hlen:])
    if hlen == 32 and view[20:24] == _TS_ALIGNED:
        seg.ts_val, seg.ts_ecr = _II.unpack_from(view, 24)
    elif hlen > HEADER_LEN and not _parse_options(view[HEADER_LEN:hlen], seg):
        return None
    return seg


def _parse_options(opts: memoryview, seg: Segment) -> bool:
    i, n = 0, len(opts)
    syn = seg.flags & SYN
    while i < n:
        kind = opts[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            return False
        length = opts[i + 1]
        if length < 2 or i + length > n:
            return False
        if kind == OPT_MSS:
            if length != 4:
                return False
            if syn:
                seg.mss = (opts[i + 2] << 8) | opts[i + 3]
        elif kind == OPT_WSCALE:
            if length != 3:
                return False
            if syn:
                seg.wscale = min(opts[i + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERM:
            if length != 2:
                return False
            if syn:
                seg.sack_perm = True
        elif kind == OPT_TIMESTAMP:
            if length != 10:
                return False
            seg.ts_val, seg.ts_ecr = _II.unpack_from(opts, i + 2)
        elif kind == OPT_SACK:
            if (length - 2) % 8 or length == 2:
                return False
            seg.sack_blocks = tuple(
                _II.unpack_from(opts, j) for j in range(i + 2, i + length, 8)
            )
        # Unknown options are skipped (RFC 9293 3.1: MUST be ignored).
        i += length
    return True


def syn_options(mss: int, wscale: int | None, sack_perm: bool,
                ts: tuple[int, int] | None) -> bytes:
    """Options for a SYN or SYN-ACK, 4-byte aligned (at most 20 bytes)."""
    out = bytearray(struct.pack("!BBH", OPT_MSS, 4, mss))
    if ts is not None:
        out += (b"\x04\x02" if sack_perm else b"\x01\x01") + struct.pack("!BBII", 8, 10, *ts)
    elif sack_perm:
        out += b"\x01\x01\x04\x02"
    if wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    return bytes(out)


def ts_option(ts_val: int, ts_ecr: int) -> bytes:
    """The aligned NOP NOP TIMESTAMP option (12 bytes)."""
    return _TS_PACK.pack(_TS_ALIGNED, ts_val, ts_ecr)


def sack_option(blocks: list[tuple[int, int]], base: int = 0) -> bytes:
    """NOP NOP SACK with up to 4 (left, right) blocks: wire values, or
    sequence numbers relative to ``base`` (the connection's IRS)."""
    n = len(blocks)
    out = bytearray(b"\x01\x01" + bytes((OPT_SACK, 2 + 8 * n)))
    for left, right in blocks:
        out += _II.pack((left + base) & 0xFFFFFFFF, (right + base) & 0xFFFFFFFF)
    return bytes(out)


def build_segment(sport: int, dport: int, seq: int, ack: int, flags: int, wnd: int,
                  options: bytes = b"", payload: bytes | bytearray | memoryview = b"") -> bytearray:
    """A TCP segment with a zero checksum (the IP layer fills offset 16)."""
    hlen = HEADER_LEN + len(options)
    seg = bytearray(hlen + len(payload))
    _HDR.pack_into(seg, 0, sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                   (hlen >> 2) << 4, flags, wnd, 0, 0)
    if options:
        seg[HEADER_LEN:hlen] = options
    if payload:
        seg[hlen:] = payload
    return seg
