"""Packet representation for the IP layer (smoltcp ``wire/`` style).

Two levels, both sans-IO:

* *checked views* (``ipv4_parse``, ``ipv6_parse``, ``ipv6_walk``,
  ``icmp_parse``, ``udp_parse``) validate untrusted bytes and return plain
  tuples; the stack's inbound fast path uses these directly, so validation
  lives in exactly one place.  They raise :class:`WireError` whose ``reason``
  is the counter name the stack records the drop under.
* *emitters* (``emit_ipv4_header``, ``emit_ipv6_header``, ``emit_icmpv4``,
  ``emit_icmpv6``, ``emit_udp``) build headers with checksums filled in, and
  frozen ``*Repr`` dataclasses (``IPv4Repr``, ``IPv6Repr``, ``UDPRepr``,
  ``ICMPRepr``) give a readable parse/emit round trip for tests and tools.

Addresses on this layer are raw ``bytes`` (4 or 16), never ``ipaddress``
objects: the stack maps them to objects through cached lookups.  TCP header
parsing belongs to ``tcp.py``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nbgateway.netstack.checksum import fold, ones_sum, pseudo_sum_packed

# IANA protocol numbers / IPv6 next-header values.
PROTO_HOPOPTS = 0
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ROUTING = 43
PROTO_FRAGMENT = 44
PROTO_ESP = 50
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_NONE = 59
PROTO_DSTOPTS = 60

IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
UDP_HEADER_LEN = 8
ICMP_HEADER_LEN = 8
DEFAULT_TTL = 64

# IPv4 flags/fragment field.
IP4_DF = 0x4000
IP4_MF = 0x2000
IP4_OFFSET_MASK = 0x1FFF

# IPv4 options (RFC 791 3.1) that make us drop the packet: source routes
# (Linux accept_source_route=0 behaviour; we never act on them).
_IP4_SOURCE_ROUTE = frozenset((131, 137))

# ICMPv4 types/codes (RFC 792).
ICMP4_ECHO_REPLY = 0
ICMP4_DEST_UNREACH = 3
ICMP4_ECHO_REQUEST = 8
ICMP4_TIME_EXCEEDED = 11
ICMP4_PARAM_PROBLEM = 12
ICMP4_ERROR_TYPES = frozenset((3, 4, 5, 11, 12))
ICMP4_CODE_NET_UNREACH = 0
ICMP4_CODE_HOST_UNREACH = 1
ICMP4_CODE_PROTO_UNREACH = 2
ICMP4_CODE_PORT_UNREACH = 3
ICMP4_CODE_FRAG_NEEDED = 4

# ICMPv6 types/codes (RFC 4443).
ICMP6_DEST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_PARAM_PROBLEM = 4
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
ICMP6_CODE_NO_ROUTE = 0
ICMP6_CODE_ADDR_UNREACH = 3
ICMP6_CODE_PORT_UNREACH = 4
ICMP6_CODE_UNRECOGNIZED_NH = 1

# Extension headers walked at most this deep (bounds per-packet work).
MAX_IPV6_EXTENSIONS = 8

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_HHHH = struct.Struct("!HHHH")
_FRAG6 = struct.Struct("!BBHI")


class WireError(ValueError):
    """Malformed or unsupported packet; ``reason`` is a counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------- IPv4


def ipv4_parse(buf: memoryview | bytes) -> tuple[int, int, int, int, int, int, bytes, bytes]:
    """Validate an IPv4 header (RFC 791, RFC 1122 3.2.1).

    Returns ``(header_len, total_len, ident, flags_frag, ttl, protocol, src,
    dst)``; bytes after ``total_len`` are link padding the caller ignores.
    Options are walked for well-formedness; source-route options are refused.
    TTL is not checked: a host never drops a datagram for its TTL (RFC 1122
    3.2.1.7), only forwarders do and we never forward.
    """
    n = len(buf)
    if n < IPV4_HEADER_LEN:
        raise WireError("drop_ip4_truncated")
    vihl, _tos, total, ident, ff, ttl, proto, _ck, src, dst = _IP4.unpack_from(buf)
    hl = (vihl & 0x0F) << 2
    if vihl >> 4 != 4 or hl < IPV4_HEADER_LEN:
        raise WireError("drop_ip4_bad_header")
    if total < hl or total > n:
        raise WireError("drop_ip4_truncated")
    if fold(ones_sum(buf[:hl])):
        raise WireError("drop_ip4_bad_checksum")
    if hl > IPV4_HEADER_LEN:
        _ipv4_check_options(buf[IPV4_HEADER_LEN:hl])
    return hl, total, ident, ff, ttl, proto, src, dst


def _ipv4_check_options(opts: memoryview | bytes) -> None:
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == 0:  # end of option list
            return
        if kind == 1:  # no-operation
            i += 1
            continue
        if i + 1 >= n or opts[i + 1] < 2 or i + opts[i + 1] > n:
            raise WireError("drop_ip4_bad_options")
        if kind in _IP4_SOURCE_ROUTE:
            raise WireError("drop_ip4_source_route")
        i += opts[i + 1]


def emit_ipv4_header(
    src: bytes, dst: bytes, protocol: int, payload_len: int, *, ttl: int = DEFAULT_TTL,
    ident: int = 0, flags_frag: int = IP4_DF, tos: int = 0,
) -> bytes:
    """A 20-byte IPv4 header (no options) with its checksum filled in."""
    total = IPV4_HEADER_LEN + payload_len
    if total > 0xFFFF:
        raise WireError("ip4_too_long")
    hdr = _IP4.pack(0x45, tos, total, ident & 0xFFFF, flags_frag, ttl, protocol, 0, src, dst)
    ck = fold(ones_sum(hdr))
    return hdr[:10] + ck.to_bytes(2, "big") + hdr[12:]


# --------------------------------------------------------------------- IPv6


def ipv6_parse(buf: memoryview | bytes) -> tuple[int, int, int, bytes, bytes]:
    """Validate the fixed IPv6 header (RFC 8200 3).

    Returns ``(end, next_header, hop_limit, src, dst)`` where ``end`` is
    ``40 + payload_length``.  Jumbograms (payload length 0 with a jumbo
    option) are not supported; a zero payload length simply means "empty".
    """
    if len(buf) < IPV6_HEADER_LEN:
        raise WireError("drop_ip6_truncated")
    vtf, plen, nh, hlim, src, dst = _IP6.unpack_from(buf)
    if vtf >> 28 != 6:
        raise WireError("drop_ip6_bad_header")
    end = IPV6_HEADER_LEN + plen
    if end > len(buf):
        raise WireError("drop_ip6_truncated")
    return end, nh, hlim, src, dst


def ipv6_walk(
    buf: memoryview | bytes, nh: int, off: int, end: int, first: bool = True,
) -> tuple[int, int, tuple[int, bool, int] | None]:
    """Skip IPv6 extension headers (RFC 8200 4).

    Returns ``(protocol, offset, fragment)``: the upper-layer protocol, the
    offset of its header, and for a non-atomic Fragment header
    ``(fragment_offset_bytes, more_fragments, identification)`` (the walk stops
    there: what follows is the fragmentable part, walked again after
    reassembly with ``first=False``).  Hop-by-Hop and Destination options are
    walked and unknown options handled per their action bits (all non-skip
    actions discard; no Parameter Problem is sent).  A Routing header with
    segments left is dropped (we never forward); ESP/AH are unsupported.
    """
    count = 0
    while True:
        if nh in (PROTO_HOPOPTS, PROTO_DSTOPTS, PROTO_ROUTING):
            if nh == PROTO_HOPOPTS and not (first and count == 0):
                raise WireError("drop_ip6_bad_ext_order")
            if off + 8 > end:
                raise WireError("drop_ip6_truncated")
            hlen = (buf[off + 1] + 1) << 3
            if off + hlen > end:
                raise WireError("drop_ip6_truncated")
            if nh == PROTO_ROUTING:
                if buf[off + 3] != 0:  # segments left
                    raise WireError("drop_ip6_routing_header")
            else:
                _ipv6_check_options(buf[off + 2 : off + hlen])
            nh = buf[off]
            off += hlen
        elif nh == PROTO_FRAGMENT:
            if off + 8 > end:
                raise WireError("drop_ip6_truncated")
            nxt, _res, offm, ident = _FRAG6.unpack_from(buf, off)
            off += 8
            foff = offm & 0xFFF8
            more = bool(offm & 1)
            if foff or more:
                return nxt, off, (foff, more, ident)
            nh = nxt  # atomic fragment (RFC 6946): process in place
        elif nh in (PROTO_ESP, PROTO_AH):
            raise WireError("drop_ip6_unsupported_ext")
        else:
            return nh, off, None
        count += 1
        if count > MAX_IPV6_EXTENSIONS:
            raise WireError("drop_ip6_too_many_ext")


def _ipv6_check_options(opts: memoryview | bytes) -> None:
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == 0:  # Pad1
            i += 1
            continue
        if i + 1 >= n or i + 2 + opts[i + 1] > n:
            raise WireError("drop_ip6_bad_options")
        if kind != 1 and kind >> 6:  # not PadN and not "skip over"
            raise WireError("drop_ip6_unknown_option")
        i += 2 + opts[i + 1]


def emit_ipv6_header(
    src: bytes, dst: bytes, next_header: int, payload_len: int, *,
    hop_limit: int = DEFAULT_TTL, traffic_class: int = 0, flow_label: int = 0,
) -> bytes:
    """A 40-byte IPv6 header."""
    if payload_len > 0xFFFF:
        raise WireError("ip6_too_long")
    vtf = (6 << 28) | ((traffic_class & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return _IP6.pack(vtf, payload_len, next_header, hop_limit, src, dst)


# ------------------------------------------------------------ ICMP and UDP


def icmp_parse(
    buf: memoryview | bytes, pseudo: int = 0,
) -> tuple[int, int, bytes]:
    """Validate an ICMPv4 (``pseudo=0``) or ICMPv6 message (``pseudo`` = the
    pseudo-header sum, RFC 4443 2.3).  Returns ``(type, code, rest)`` where
    ``rest`` is the 4-byte rest-of-header; the body starts at offset 8."""
    if len(buf) < ICMP_HEADER_LEN:
        raise WireError("drop_icmp_truncated")
    if fold(ones_sum(buf, pseudo)):
        raise WireError("drop_icmp_bad_checksum")
    return buf[0], buf[1], bytes(buf[4:8])


def emit_icmpv4(icmp_type: int, code: int, rest: bytes, data: bytes | memoryview) -> bytes:
    """An ICMPv4 message with its checksum."""
    msg = bytes((icmp_type, code, 0, 0)) + rest + data
    return msg[:2] + fold(ones_sum(msg)).to_bytes(2, "big") + msg[4:]


def emit_icmpv6(
    src: bytes, dst: bytes, icmp_type: int, code: int, rest: bytes, data: bytes | memoryview,
) -> bytes:
    """An ICMPv6 message with its checksum over the pseudo header."""
    msg = bytes((icmp_type, code, 0, 0)) + rest + data
    ck = fold(ones_sum(msg, pseudo_sum_packed(src, dst, PROTO_ICMPV6, len(msg))))
    return msg[:2] + ck.to_bytes(2, "big") + msg[4:]


def udp_parse(
    buf: memoryview | bytes, src: bytes, dst: bytes, verify: bool = True,
) -> tuple[int, int, int]:
    """Validate a UDP datagram (RFC 768; over IPv6 a zero checksum is invalid,
    RFC 8200 8.1).  ``buf`` is the IP payload; bytes past the UDP length are
    ignored.  Returns ``(src_port, dst_port, length)``; the payload is
    ``buf[8:length]``.  ``verify`` False skips the checksum check (a packet the
    link below authenticated), never the length checks."""
    n = len(buf)
    if n < UDP_HEADER_LEN:
        raise WireError("drop_udp_truncated")
    sport, dport, length, ck = _HHHH.unpack_from(buf)
    if length < UDP_HEADER_LEN or length > n:
        raise WireError("drop_udp_bad_length")
    if ck == 0:
        if len(src) == 16:
            raise WireError("drop_udp_bad_checksum")
        return sport, dport, length
    if verify and fold(ones_sum(buf[:length], pseudo_sum_packed(src, dst, PROTO_UDP, length))):
        raise WireError("drop_udp_bad_checksum")
    return sport, dport, length


def emit_udp(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes | memoryview,
) -> bytearray:
    """A UDP datagram (header + payload) with its checksum (0 is sent as
    0xFFFF, RFC 768)."""
    length = UDP_HEADER_LEN + len(payload)
    if length > 0xFFFF:
        raise WireError("udp_too_long")
    seg = bytearray(_HHHH.pack(sport, dport, length, 0))
    seg += payload
    ck = fold(ones_sum(seg, pseudo_sum_packed(src, dst, PROTO_UDP, length))) or 0xFFFF
    seg[6:8] = ck.to_bytes(2, "big")
    return seg


# ------------------------------------------------------------------ Reprs


@dataclass(frozen=True, slots=True)
class IPv4Repr:
    """Parsed IPv4 header fields (options are validated, not kept)."""

    src: bytes
    dst: bytes
    protocol: int
    payload_len: int
    ttl: int = DEFAULT_TTL
    ident: int = 0
    flags_frag: int = IP4_DF

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> IPv4Repr:
        hl, total, ident, ff, ttl, proto, src, dst = ipv4_parse(buf)
        return cls(src, dst, proto, total - hl, ttl, ident, ff)

    @property
    def more_fragments(self) -> bool:
        return bool(self.flags_frag & IP4_MF)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in bytes."""
        return (self.flags_frag & IP4_OFFSET_MASK) << 3

    def emit(self) -> bytes:
        return emit_ipv4_header(
            self.src, self.dst, self.protocol, self.payload_len,
            ttl=self.ttl, ident=self.ident, flags_frag=self.flags_frag,
        )


@dataclass(frozen=True, slots=True)
class IPv6Repr:
    """Parsed fixed IPv6 header; ``next_header`` is the raw field."""

    src: bytes
    dst: bytes
    next_header: int
    payload_len: int
    hop_limit: int = DEFAULT_TTL

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> IPv6Repr:
        end, nh, hlim, src, dst = ipv6_parse(buf)
        return cls(src, dst, nh, end - IPV6_HEADER_LEN, hlim)

    def emit(self) -> bytes:
        return emit_ipv6_header(
            self.src, self.dst, self.next_header, self.payload_len, hop_limit=self.hop_limit,
        )


@dataclass(frozen=True, slots=True)
class UDPRepr:
    src_port: int
    dst_port: int
    payload: bytes

    @classmethod
    def parse(cls, buf: memoryview | bytes, src: bytes, dst: bytes) -> UDPRepr:
        sport, dport, length = udp_parse(buf, src, dst)
        return cls(sport, dport, bytes(buf[UDP_HEADER_LEN:length]))

    def emit(self, src: bytes, dst: bytes) -> bytearray:
        return emit_udp(src, dst, self.src_port, self.dst_port, self.payload)


@dataclass(frozen=True, slots=True)
class ICMPRepr:
    """An ICMPv4 or ICMPv6 message: type, code, 4-byte rest of header, body."""

    type: int
    code: int
    rest: bytes = b"\x00\x00\x00\x00"
    data: bytes = b""

    @classmethod
    def parse(cls, buf: memoryview | bytes, src: bytes = b"", dst: bytes = b"") -> ICMPRepr:
        """ICMPv4 when ``src``/``dst`` are empty, else ICMPv6 (pseudo header)."""
        pseudo = pseudo_sum_packed(src, dst, PROTO_ICMPV6, len(buf)) if src else 0
        t, c, rest = icmp_parse(buf, pseudo)
        return cls(t, c, rest, bytes(buf[ICMP_HEADER_LEN:]))

    def emit_v4(self) -> bytes:
        return emit_icmpv4(self.type, self.code, self.rest, self.data)

    def emit_v6(self, src: bytes, dst: bytes) -> bytes:
        return emit_icmpv6(src, dst, self.type, self.code, self.rest, self.data)
