"""RFC 1071 Internet checksum and the IPv4/IPv6 pseudo-header sums (RFC 9293 3.1,
RFC 8200 8.1) shared by the IP, ICMP, UDP and TCP layers.

Representation: a "sum" is the end-around-carry one's-complement sum of the
data's big-endian 16-bit words, kept as a plain int.  It is computed as
``int.from_bytes(data, "big") % 0xFFFF`` (2**16 is 1 modulo 0xFFFF, so the
modulus *is* the end-around carry), which is about four times faster in CPython
than summing a ``memoryview.cast("H")``.  One's-complement arithmetic has two
zeros; a sum of non-zero data is always reported in 1..0xFFFF ("negative
zero" 0xFFFF, never 0), exactly like the RFC 1071 loop.

All ``*_sum`` helpers return *unfolded* sums (any non-negative int) so callers
can add pieces before folding once with :func:`fold`; only add them and fold,
never compare them directly.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_from_bytes = int.from_bytes


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Unfolded one's-complement sum of ``data`` (odd length: zero padded)."""
    v = _from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    if v:
        v = v % 0xFFFF or 0xFFFF
    return initial + v


def fold(total: int) -> int:
    """Fold an unfolded sum, complement it, and return the 16-bit checksum as
    an int in network order (for ``int.to_bytes(2, "big")``).  A correctly
    checksummed message folds to 0."""
    t = total % 0xFFFF
    if t == 0 and total:
        t = 0xFFFF
    return ~t & 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit Internet checksum of ``data`` (network order int).  Verifying a
    packet whose checksum field is filled in yields 0."""
    return fold(ones_sum(data, initial))


def pseudo_sum_packed(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Unfolded pseudo-header sum from raw 4- or 16-byte addresses.  The
    protocol and (for IPv6 32-bit) length words are added arithmetically, so no
    header bytes are built."""
    return ones_sum(src) + ones_sum(dst) + protocol + (length >> 16) + (length & 0xFFFF)


def pseudo_header_sum(src: IPAddress, dst: IPAddress, protocol: int, length: int) -> int:
    """Unfolded sum of the IPv4 or IPv6 pseudo header."""
    return pseudo_sum_packed(src.packed, dst.packed, protocol, length)
