"""RFC 1071 Internet checksum and the IPv4/IPv6 pseudo-header sums (RFC 9293 3.1,
RFC 8200 8.1) shared by the IP, ICMP, UDP and TCP layers.

Sums are computed over native-order 16-bit words (``memoryview.cast("H")`` +
``sum``), which RFC 1071 section 2(B) allows: the one's-complement sum is byte
order independent up to a final byte swap.  All ``*_sum`` helpers return
*unfolded* native-order sums so callers can add pieces before folding once.
"""

from __future__ import annotations

import ipaddress
import sys

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LITTLE = sys.byteorder == "little"


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Unfolded native-order 16-bit one's-complement sum of ``data``."""
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\x00"
    return initial + sum(memoryview(data).cast("B").cast("H"))


def fold(total: int) -> int:
    """Fold a native-order sum, complement it, and return it in network order
    as an int suitable for ``int.to_bytes(2, "big")``."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    total = ~total & 0xFFFF
    if _LITTLE:
        total = ((total & 0xFF) << 8) | (total >> 8)
    return total


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit Internet checksum of ``data`` (network order int).  Verifying a
    packet whose checksum field is filled in yields 0."""
    return fold(ones_sum(data, initial))


def pseudo_header_sum(src: IPAddress, dst: IPAddress, protocol: int, length: int) -> int:
    """Unfolded native-order sum of the IPv4 or IPv6 pseudo header."""
    if src.version == 4:
        hdr = src.packed + dst.packed + bytes((0, protocol)) + length.to_bytes(2, "big")
    else:
        hdr = (
            src.packed + dst.packed + length.to_bytes(4, "big") + b"\x00\x00\x00"
            + bytes((protocol,))
        )
    return ones_sum(hdr)
