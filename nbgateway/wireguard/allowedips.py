"""Cryptokey routing: the allowed-IPs longest-prefix table (whitepaper section 2).

Each prefix belongs to exactly one value (peer); inserting a prefix already owned
by another value moves it.  Lookups take the raw packed address (4 or 16 bytes,
as sliced from a packet header) and probe one dict per distinct prefix length,
longest first: O(number of distinct prefix lengths), with no objects created.
A reverse index (value -> its networks) makes ``networks_of`` and
``remove_value`` cost the value's own networks, not the table's size, so
rewriting one peer's allowed IPs in a roster of thousands stays O(1)-ish.
The index is a dict, or, with ``reverse_attr``, an attribute of each value
(the device keeps it in ``Peer.allowed_ips``: no dict entry per peer).

Memory per network: one entry in its length's dict (key: the address's
prefix bits as an int; for a host, ``/32`` or ``/128``, the prefix object
itself, so a roster of hosts keeps no key int of its own) and its
:class:`~nbgateway.netstack.prefix.Prefix` in the owner's reverse-index tuple
(shared with whoever handed it in, e.g. the converted network map); no
:mod:`ipaddress` objects are kept.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from nbgateway.netstack.prefix import HOST_V4, HOST_V6, Prefix, as_prefix

V = TypeVar("V")
NetworkLike = Prefix | str | ipaddress.IPv4Network | ipaddress.IPv6Network
_MASK128 = (1 << 128) - 1


class _Family(Generic[V]):
    """One address family's tables: one dict per prefix length.  The
    full-length table (``/32`` or ``/128``: every roster peer's address) is
    keyed by the :class:`Prefix` objects themselves (an encoded host prefix is
    ``address << 8 | tag``, so a lookup builds that int; no key int is kept
    per host), the shorter ones by the address's prefix bits."""

    __slots__ = ("bits", "host", "lengths", "tables", "tag")

    def __init__(self, bits: int, tag: int) -> None:
        self.bits = bits
        self.tag = tag  # a host prefix is address << 8 | tag
        self.tables: dict[int, dict[int, V]] = {}
        #: the full-length table (None while it is empty)
        self.host: dict[int, V] | None = None
        #: distinct prefix lengths shorter than ``bits``, longest first
        self.lengths: list[int] = []

    def _key(self, net: Prefix, length: int) -> int:
        if length == self.bits:
            return net
        return ((net >> 8) & _MASK128) >> (self.bits - length)

    def _reindex(self) -> None:
        self.host = self.tables.get(self.bits)
        self.lengths = sorted((n for n in self.tables if n != self.bits), reverse=True)

    def insert(self, net: Prefix, value: V) -> None:
        length = net & 0xFF
        table = self.tables.get(length)
        if table is None:
            table = self.tables[length] = {}
            self._reindex()
        table[self._key(net, length)] = value

    def get(self, net: Prefix) -> V | None:
        length = net & 0xFF
        table = self.tables.get(length)
        return None if table is None else table.get(self._key(net, length))

    def remove(self, net: Prefix) -> V | None:
        length = net & 0xFF
        table = self.tables.get(length)
        if table is None:
            return None
        value = table.pop(self._key(net, length), None)
        if not table:
            del self.tables[length]
            self._reindex()
        return value

    def lookup(self, addr: int) -> V | None:
        host = self.host
        if host is not None:
            value = host.get(addr << 8 | self.tag)
            if value is not None:
                return value
        bits = self.bits
        tables = self.tables
        for length in self.lengths:
            value = tables[length].get(addr >> (bits - length))
            if value is not None:
                return value
        return None


class AllowedIPs(Generic[V]):
    """Longest-prefix-match table mapping IPv4/IPv6 networks to values.

    Networks are kept as :class:`~nbgateway.netstack.prefix.Prefix` ints (text
    and :mod:`ipaddress` networks are converted on the way in); the family
    tables are the only owner map, and the reverse index holds one tuple of
    prefixes per value.

    With ``reverse_attr`` the reverse index is that attribute of each value
    (which must start as ``()`` and be written by this table only); without
    it, a dict keyed by the values."""

    def __init__(self, reverse_attr: str | None = None) -> None:
        self._v4: _Family[V] = _Family(32, HOST_V4)
        self._v6: _Family[V] = _Family(128, HOST_V6)
        self._count = 0
        self._attr = reverse_attr
        #: value -> that value's prefixes (insertion order); values are keys,
        #: so two values must not be equal unless they are the same object
        #: (device peers compare by identity; no id() int per value).
        #: Unused with ``reverse_attr``.
        self._by_value: dict[V, tuple[Prefix, ...]] = {}

    def _nets(self, value: V) -> tuple[Prefix, ...]:
        if self._attr is None:
            return self._by_value.get(value, ())
        return getattr(value, self._attr)

    def _set_nets(self, value: V, nets: tuple[Prefix, ...]) -> None:
        if self._attr is not None:
            setattr(value, self._attr, nets)
        elif nets:
            self._by_value[value] = nets
        else:
            self._by_value.pop(value, None)

    def _family(self, net: Prefix) -> _Family[V]:
        return self._v6 if net >> 136 else self._v4

    def insert(self, network: NetworkLike, value: V) -> V | None:
        """Give ``network`` to ``value``; returns the value that owned it before
        (``None`` if none), which has lost it."""
        net = as_prefix(network)
        fam = self._family(net)
        previous = fam.get(net)
        fam.insert(net, value)
        if previous is value:
            return None
        if previous is not None:
            self._drop_reverse(previous, net)
        else:
            self._count += 1
        self._set_nets(value, (*self._nets(value), net))
        return previous

    def _drop_reverse(self, value: V, net: Prefix) -> None:
        nets = self._nets(value)
        if nets:
            self._set_nets(value, tuple(n for n in nets if n != net))

    def remove(self, network: NetworkLike) -> None:
        net = as_prefix(network)
        value = self._family(net).remove(net)
        if value is not None:
            self._count -= 1
            self._drop_reverse(value, net)

    def owner(self, network: NetworkLike) -> V | None:
        """The value owning exactly ``network`` (no longest-prefix match)."""
        net = as_prefix(network)
        return self._family(net).get(net)

    def remove_value(self, value: V) -> None:
        for net in self.networks_of(value):
            self.remove(net)

    def networks_of(self, value: V) -> tuple[Prefix, ...]:
        """The value's networks, in insertion order (the index's own tuple)."""
        return self._nets(value)

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
        host = fam.host
        if host is not None:
            value = host.get(addr << 8 | fam.tag)
            if value is not None:
                return value
        bits = fam.bits
        tables = fam.tables
        for length in fam.lengths:
            value = tables[length].get(addr >> (bits - length))
            if value is not None:
                return value
        return None

    def lookup(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> V | None:
        if address.__class__ is str:  # the private gate's roster check, per request
            return self.lookup_packed(_packed(address))
        return self.lookup_packed(ipaddress.ip_address(address).packed)

    def __iter__(self) -> Iterator[tuple[Prefix, V]]:
        items: list[tuple[Prefix, V]] = []
        if self._attr is not None:  # no list of values: walk the tables
            for version, fam in ((4, self._v4), (6, self._v6)):
                for length, table in fam.tables.items():
                    if length == fam.bits:  # keyed by the prefixes themselves
                        items.extend(table.items())  # type: ignore[arg-type]
                        continue
                    shift = fam.bits - length
                    items.extend((Prefix.of(version, key << shift, length), value)
                                 for key, value in table.items())
            return iter(items)
        for nets in self._by_value.values():
            for net in nets:
                value = self._family(net).get(net)
                if value is not None:
                    items.append((net, value))
        return iter(items)

    def __len__(self) -> int:
        return self._count

    def update(self, items: Iterable[tuple[NetworkLike, V]]) -> None:
        for net, value in items:
            self.insert(net, value)


@functools.lru_cache(maxsize=4096)
def _packed(address: str) -> bytes:
    """``ip_address(address).packed``, memoised (bounded; an invalid string
    raises ``ValueError`` every time, it is not cached)."""
    return ipaddress.ip_address(address).packed
