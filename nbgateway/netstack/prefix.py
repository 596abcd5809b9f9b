"""Compact IP prefixes: one int per network, for rosters of thousands of peers.

An :class:`ipaddress.IPv4Network` keeps a ``__dict__`` with two address
objects and a closure (~500 bytes); a roster peer has two of them, held by
the converted map, the WireGuard allowed-IPs table and the packet filter.
:class:`Prefix` is an ``int`` subclass without a ``__dict__`` (44-60 bytes)
that encodes the whole network:

* IPv4: ``(address << 8) | prefix length``;
* IPv6: ``(1 << 136) | (address << 8) | prefix length``.

Host bits are always cleared (``strict=False`` semantics of
:func:`ipaddress.ip_network`).  A host prefix (``/32``, ``/128``) is therefore
its own filter key: the packet filter builds ``(src << 8) | 32`` (IPv4) or
``HOST_V6 | (src << 8)`` (IPv6) from a packet's source and probes a set of
prefixes, with no per-host object of its own.

Hash and equality are the int's (C speed: a set of prefixes answers a probe
by a plain int without a Python call), so a prefix never equals an
:mod:`ipaddress` network: compare ``str()`` forms or convert with
:meth:`Prefix.network` / :func:`as_prefix`.  The type keeps an encoded
prefix from being taken for an address: APIs that accept "a network" call
:func:`as_prefix`, which parses text and :mod:`ipaddress` networks and takes
a :class:`Prefix` as it is.
"""

from __future__ import annotations

import ipaddress
from typing import Any

__all__ = ["HOST_V4", "HOST_V6", "V6_FLAG", "Prefix", "as_prefix"]

#: the IPv6 marker bit of an encoded prefix
V6_FLAG = 1 << 136
#: ``(src << 8) | HOST_V4`` is the filter key of an IPv4 host prefix
HOST_V4 = 32
#: ``(src << 8) | HOST_V6`` is the filter key of an IPv6 host prefix
HOST_V6 = V6_FLAG | 128

_MASK128 = (1 << 128) - 1
_NETWORK_TYPES = (ipaddress.IPv4Network, ipaddress.IPv6Network)


class Prefix(int):
    """An IPv4 or IPv6 network encoded in one int (see the module docstring)."""

    __slots__ = ()

    @classmethod
    def of(cls, version: int, address: int, length: int) -> Prefix:
        """The network of ``address`` (an int) with ``length`` bits (host bits
        cleared)."""
        bits = 32 if version == 4 else 128 if version == 6 else 0
        if not bits:
            raise ValueError(f"bad IP version {version!r}")
        if not 0 <= length <= bits or address < 0 or address >> bits:
            raise ValueError(f"bad prefix {address!r}/{length!r}")
        shift = bits - length
        address = address >> shift << shift
        flag = 0 if version == 4 else V6_FLAG
        return cls(flag | address << 8 | length)

    @classmethod
    def from_network(cls, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Prefix:
        return cls.of(net.version, int(net.network_address), net.prefixlen)

    @classmethod
    def from_packed(cls, packed: bytes, length: int) -> Prefix:
        """Address bytes (4 or 16) and a prefix length."""
        version = 4 if len(packed) == 4 else 6 if len(packed) == 16 else 0
        return cls.of(version, int.from_bytes(packed, "big"), length)

    @classmethod
    def parse(cls, text: str) -> Prefix:
        """``"a.b.c.d/len"``, ``"x::y/len"`` or a bare address (a host prefix),
        as :func:`ipaddress.ip_network` with ``strict=False`` reads it;
        ValueError otherwise."""
        return cls.from_network(ipaddress.ip_network(text, strict=False))

    @property
    def version(self) -> int:
        return 6 if self >> 136 else 4

    @property
    def prefixlen(self) -> int:
        return self & 0xFF

    @property
    def max_prefixlen(self) -> int:
        return 128 if self >> 136 else 32

    @property
    def is_host(self) -> bool:
        """True for a single address (``/32`` or ``/128``)."""
        return self & 0xFF == (128 if self >> 136 else 32)

    @property
    def address(self) -> int:
        """The network address as an int."""
        return (self >> 8) & _MASK128

    @property
    def mask(self) -> int:
        """The netmask as an int."""
        bits = 128 if self >> 136 else 32
        return ((1 << bits) - 1) ^ ((1 << (bits - (self & 0xFF))) - 1)

    @property
    def network_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        if self >> 136:
            return ipaddress.IPv6Address(self.address)
        return ipaddress.IPv4Address(self.address)

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The equivalent :mod:`ipaddress` network (a new object)."""
        if self >> 136:
            return ipaddress.IPv6Network((self.address, self & 0xFF))
        return ipaddress.IPv4Network((self.address, self & 0xFF))

    def contains(self, version: int, address: int) -> bool:
        """Whether the address (an int of that version) is in this network."""
        if (version == 6) != bool(self >> 136):
            return False
        shift = (128 if version == 6 else 32) - (self & 0xFF)
        return address >> shift == self.address >> shift

    def __str__(self) -> str:
        return f"{self.network_address}/{self & 0xFF}"

    def __repr__(self) -> str:
        return f"Prefix({str(self)!r})"


    def __reduce__(self) -> tuple[Any, ...]:
        return (Prefix, (int(self),))


def as_prefix(value: Prefix | str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> Prefix:
    """A :class:`Prefix` as it is; text or an :mod:`ipaddress` network
    converted.  A plain int is refused (it could be an address)."""
    if type(value) is Prefix:
        return value
    if isinstance(value, _NETWORK_TYPES):
        return Prefix.from_network(value)
    if isinstance(value, str):
        return Prefix.parse(value)
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return Prefix.of(value.version, int(value), value.max_prefixlen)
    raise TypeError(f"not a network: {value!r}")
