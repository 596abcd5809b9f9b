"""Cryptokey routing: the allowed-IPs longest-prefix table (whitepaper section 2).

Each prefix belongs to exactly one value (peer); inserting a prefix already owned
by another value moves it.  Lookups take the raw packed address (4 or 16 bytes,
as sliced from a packet header) and probe one dict per distinct prefix length,
longest first: O(number of distinct prefix lengths), with no objects created.
A reverse index (value -> its networks) makes ``networks_of`` and
``remove_value`` cost the value's own networks, not the table's size, so
rewriting one peer's allowed IPs in a roster of thousands stays O(1)-ish.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Family(Generic[V]):
    __slots__ = ("bits", "lengths", "tables")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, V]] = {}
        self.lengths: list[int] = []  # distinct prefix lengths, longest first

    def insert(self, prefix: int, length: int, value: V) -> None:
        table = self.tables.get(length)
        if table is None:
            table = self.tables[length] = {}
            self.lengths = sorted(self.tables, reverse=True)
        table[prefix >> (self.bits - length)] = value

    def remove(self, prefix: int, length: int) -> V | None:
        table = self.tables.get(length)
        if table is None:
            return None
        value = table.pop(prefix >> (self.bits - length), None)
        if not table:
            del self.tables[length]
            self.lengths = sorted(self.tables, reverse=True)
        return value

    def lookup(self, addr: int) -> V | None:
        bits = self.bits
        tables = self.tables
        for length in self.lengths:
            value = tables[length].get(addr >> (bits - length))
            if value is not None:
                return value
        return None


class AllowedIPs(Generic[V]):
    """Longest-prefix-match table mapping IPv4/IPv6 networks to values."""

    def __init__(self) -> None:
        self._v4: _Family[V] = _Family(32)
        self._v6: _Family[V] = _Family(128)
        self._owned: dict[Network, V] = {}
        #: id(value) -> that value's networks (insertion order)
        self._by_value: dict[int, dict[Network, None]] = {}

    def insert(self, network: Network | str, value: V) -> V | None:
        """Give ``network`` to ``value``; returns the value that owned it before
        (``None`` if none), which has lost it."""
        net = ipaddress.ip_network(network, strict=False)
        fam = self._v4 if net.version == 4 else self._v6
        fam.insert(int(net.network_address), net.prefixlen, value)
        previous = self._owned.get(net)
        if previous is not None and previous is not value:
            self._drop_reverse(previous, net)
        self._owned[net] = value
        self._by_value.setdefault(id(value), {})[net] = None
        return previous if previous is not value else None

    def _drop_reverse(self, value: V, net: Network) -> None:
        nets = self._by_value.get(id(value))
        if nets is not None:
            nets.pop(net, None)
            if not nets:
                del self._by_value[id(value)]

    def remove(self, network: Network | str) -> None:
        net = ipaddress.ip_network(network, strict=False)
        fam = self._v4 if net.version == 4 else self._v6
        fam.remove(int(net.network_address), net.prefixlen)
        value = self._owned.pop(net, None)
        if value is not None:
            self._drop_reverse(value, net)

    def owner(self, network: Network) -> V | None:
        """The value owning exactly ``network`` (no longest-prefix match)."""
        return self._owned.get(network)

    def remove_value(self, value: V) -> None:
        for net in self.networks_of(value):
            self.remove(net)

    def networks_of(self, value: V) -> list[Network]:
        return list(self._by_value.get(id(value), ()))

    def lookup_packed(self, packed: bytes) -> V | None:
        """Lookup by a packed 4- or 16-byte address (the per-packet hot path)."""
        n = len(packed)
        if n == 4:
            fam = self._v4
        elif n == 16:
            fam = self._v6
        else:
            return None
        addr = int.from_bytes(packed, "big")
        bits = fam.bits
        tables = fam.tables
        for length in fam.lengths:
            value = tables[length].get(addr >> (bits - length))
            if value is not None:
                return value
        return None

    def lookup(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> V | None:
        return self.lookup_packed(ipaddress.ip_address(address).packed)

    def __iter__(self) -> Iterator[tuple[Network, V]]:
        return iter(list(self._owned.items()))

    def __len__(self) -> int:
        return len(self._owned)

    def update(self, items: Iterable[tuple[Network | str, V]]) -> None:
        for net, value in items:
            self.insert(net, value)
