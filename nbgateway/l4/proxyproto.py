"""Sans-IO PROXY protocol (HAProxy's v1 text and v2 binary header).

:class:`ProxyHeaderReader` reads an *inbound* header from an L4 load balancer
in front of the gateway: feed it the first bytes of a connection, it answers
with a :class:`ProxyHeader` (and the bytes after it), ``NOT_PROXY`` when the
connection does not start with a header, or raises :class:`ProxyProtocolError`
for a malformed one (lengths that lie, bad families, oversize).  Memory is
bounded: a v1 line is at most 107 bytes, a v2 header at most
:data:`MAX_V2_LENGTH` bytes of addresses and TLVs.

:func:`encode_v2` builds the v2 header the gateway sends to a backend whose
target has ``proxy_protocol`` set (command PROXY, TCP over IPv4 or IPv6 by
the client's family).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107
#: the most address/TLV bytes accepted after a v2 fixed header
MAX_V2_LENGTH = 2048
#: the caller's deadline for a complete inbound header (seconds)
HEADER_TIMEOUT = 5.0

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_AF_INET, _AF_INET6, _AF_UNIX = 0x1, 0x2, 0x3
_STREAM, _DGRAM = 0x1, 0x2


class ProxyProtocolError(ValueError):
    """A malformed PROXY header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """``source``/``destination`` are (ip, port), or None for LOCAL/UNKNOWN
    headers (the connection's own addresses stand)."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


class _NotProxy:
    def __repr__(self) -> str:
        return "NOT_PROXY"


NOT_PROXY = _NotProxy()


class ProxyHeaderReader:
    """Feed bytes until :meth:`feed` returns ``(header, rest)`` or
    ``(NOT_PROXY, all_bytes)``; None means more bytes are needed."""

    def __init__(self) -> None:
        self.buffered = b""
        self.done = False

    def feed(self, data: bytes) -> tuple[ProxyHeader | _NotProxy, bytes] | None:
        if self.done:
            raise ProxyProtocolError("header already read")
        self.buffered += data
        buf = self.buffered
        # could this still be a signature?
        if not V2_SIGNATURE.startswith(buf[:12]) and not V1_PREFIX.startswith(buf[:6]):
            self.done = True
            return NOT_PROXY, buf
        if buf.startswith(V2_SIGNATURE):
            return self._v2(buf)
        if buf.startswith(V1_PREFIX):
            return self._v1(buf)
        return None

    def _v1(self, buf: bytes) -> tuple[ProxyHeader, bytes] | None:
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) >= V1_MAX:
                raise ProxyProtocolError("PROXY v1 line too long")
            return None
        if end + 2 > V1_MAX:
            raise ProxyProtocolError("PROXY v1 line too long")
        self.done = True
        return parse_v1(buf[:end]), buf[end + 2:]

    def _v2(self, buf: bytes) -> tuple[ProxyHeader, bytes] | None:
        if len(buf) < 16:
            return None
        ver_cmd, fam, length = struct.unpack("!BBH", buf[12:16])
        if ver_cmd >> 4 != 2:
            raise ProxyProtocolError(f"PROXY v2: bad version {ver_cmd >> 4}")
        if length > MAX_V2_LENGTH:
            raise ProxyProtocolError(f"PROXY v2: {length} address bytes is too many")
        if len(buf) < 16 + length:
            return None
        self.done = True
        return parse_v2_body(ver_cmd & 0xF, fam, buf[16:16 + length]), buf[16 + length:]


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text[:1] == b"0") or len(text) > 5:
        raise ProxyProtocolError("PROXY v1: bad port")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError("PROXY v1: bad port")
    return port


def parse_v1(line: bytes) -> ProxyHeader:
    """One v1 line without its CRLF."""
    parts = line.split(b" ")
    if len(parts) < 2 or parts[0] != b"PROXY":
        raise ProxyProtocolError("PROXY v1: malformed")
    if parts[1] == b"UNKNOWN":
        return ProxyHeader(1, None, None)
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyProtocolError("PROXY v1: malformed")
    want = ipaddress.IPv4Address if parts[1] == b"TCP4" else ipaddress.IPv6Address
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxyProtocolError("PROXY v1: bad address") from exc
    if not isinstance(src, want) or not isinstance(dst, want):
        raise ProxyProtocolError("PROXY v1: address family mismatch")
    return ProxyHeader(1, (str(src), _port(parts[4])), (str(dst), _port(parts[5])))


def parse_v2_body(command: int, fam: int, body: bytes) -> ProxyHeader:
    """The part of a v2 header after its 16 fixed bytes."""
    if command == _CMD_LOCAL:
        return ProxyHeader(2, None, None)
    if command != _CMD_PROXY:
        raise ProxyProtocolError(f"PROXY v2: bad command {command}")
    family, transport = fam >> 4, fam & 0xF
    if family == 0:
        return ProxyHeader(2, None, None)  # UNSPEC: keep the connection's addresses
    if transport not in (_STREAM, _DGRAM):
        raise ProxyProtocolError("PROXY v2: bad transport")
    if family == _AF_INET:
        if len(body) < 12:
            raise ProxyProtocolError("PROXY v2: length shorter than IPv4 addresses")
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == _AF_INET6:
        if len(body) < 36:
            raise ProxyProtocolError("PROXY v2: length shorter than IPv6 addresses")
        src, dst = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
    elif family == _AF_UNIX:
        return ProxyHeader(2, None, None)
    else:
        raise ProxyProtocolError("PROXY v2: bad address family")
    return ProxyHeader(2, (str(src), sport), (str(dst), dport))


def encode_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v2 PROXY/TCP header; IPv4 when both addresses are IPv4 (an
    IPv4-mapped IPv6 address counts as IPv4), else IPv6."""
    src = ipaddress.ip_address(source[0].split("%", 1)[0])
    dst = ipaddress.ip_address(destination[0].split("%", 1)[0])
    if isinstance(src, ipaddress.IPv6Address) and src.ipv4_mapped is not None:
        src = src.ipv4_mapped
    if isinstance(dst, ipaddress.IPv6Address) and dst.ipv4_mapped is not None:
        dst = dst.ipv4_mapped
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        fam = (_AF_INET << 4) | _STREAM
        body = src.packed + dst.packed
    else:
        fam = (_AF_INET6 << 4) | _STREAM
        s6 = src if isinstance(src, ipaddress.IPv6Address) else ipaddress.IPv6Address(
            f"::ffff:{src}")
        d6 = dst if isinstance(dst, ipaddress.IPv6Address) else ipaddress.IPv6Address(
            f"::ffff:{dst}")
        body = s6.packed + d6.packed
    body += struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | _CMD_PROXY, fam, len(body)) + body
