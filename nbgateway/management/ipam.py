"""Tunnel address management: per-account overlay networks and allocation.

Pure functions, no database: the store passes the addresses already in use
inside the same write transaction (which it serialises per account), so two
peers can never get the same address; a unique index backs this up.

* IPv4: the account network (default ``100.64.0.0/10``); the lowest free host
  address is handed out, skipping the network and broadcast addresses.
* IPv6: a per-account ULA ``/64`` (RFC 4193: ``fd`` + 40 random bits + subnet
  0), lowest free address from ``::1``.

Peer storms: the store does not re-read and re-parse every address in use for
each new peer. :func:`window` names a small run of candidate addresses from a
hint (where this process's last allocation ended); the store asks the database
which of them are taken (one indexed query) and :func:`first_free` picks the
lowest free one. Without a hint (first allocation of a process, after a delete)
the full scan of :func:`allocate_ipv4` / :func:`allocate_ipv6` runs.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Iterable
from socket import AF_INET, inet_ntoa, inet_pton

from nbgateway.management.errors import AddressExhausted, ValidationError

__all__ = [
    "allocate_ipv4",
    "allocate_ipv6",
    "canonical_tunnel_ip",
    "first_free",
    "generate_ula_network",
    "host_range",
    "parse_network",
    "to_int",
    "window",
]

# Upper bound on how far a single allocation scans (bounded work per request).
MAX_SCAN = 1 << 22


@functools.lru_cache(maxsize=4096)  # every allocation parses its account's network
def parse_network(text: str, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse an account network, rejecting host bits and tiny prefixes."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValidationError(f"invalid network {text!r}: {exc}") from exc
    if net.version != version:
        raise ValidationError(f"network {text!r} is not an IPv{version} network")
    if net.num_addresses < 4:
        raise ValidationError(f"network {text!r} is too small")
    return net


def generate_ula_network() -> str:
    """A random RFC 4193 unique-local /64 (``fdxx:xxxx:xxxx::/64``)."""
    global_id = int.from_bytes(os.urandom(5), "big")
    prefix = (0xFD << 120) | (global_id << 80)
    return str(ipaddress.IPv6Network((prefix, 64)))


def _lowest_free(start: int, end: int, used: set[int]) -> int | None:
    for n, candidate in enumerate(range(start, end + 1)):
        if n > MAX_SCAN:
            return None
        if candidate not in used:
            return candidate
    return None


def allocate_ipv4(network: str, used: Iterable[str]) -> str:
    """Lowest free host address of ``network``; AddressExhausted when none is left."""
    net = parse_network(network, 4)
    used_ints = {int(ipaddress.IPv4Address(u)) for u in used if u}
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - 1
    found = _lowest_free(first, last, used_ints)
    if found is None:
        raise AddressExhausted(f"no free IPv4 address left in {network}")
    return str(ipaddress.IPv4Address(found))


def allocate_ipv6(network: str, used: Iterable[str]) -> str:
    """Lowest free address of the account's IPv6 network (from ``::1``)."""
    net = parse_network(network, 6)
    used_ints = {int(ipaddress.IPv6Address(u)) for u in used if u}
    first = int(net.network_address) + 1
    last = int(net.broadcast_address)
    found = _lowest_free(first, last, used_ints)
    if found is None:
        raise AddressExhausted(f"no free IPv6 address left in {network}")
    return str(ipaddress.IPv6Address(found))


# Candidates the store checks per query when allocating from a hint.
WINDOW = 16


def host_range(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    """First and last allocatable host address of an account network (as integers)."""
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - (1 if net.version == 4 else 0)
    return first, last


def window(network: str, version: int, start: int, size: int = WINDOW) -> list[str]:
    """Up to ``size`` candidate addresses (canonical text) from integer ``start``;
    empty when ``start`` is past the end of the network."""
    net = parse_network(network, version)
    first, last = host_range(net)
    start = max(start, first)
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return [str(cls(n)) for n in range(start, min(last, start + size - 1) + 1)]


def first_free(candidates: list[str], taken: Iterable[str]) -> str | None:
    """The first of ``candidates`` (ascending) not in ``taken``."""
    busy = set(taken)
    for c in candidates:
        if c not in busy:
            return c
    return None


def to_int(text: str) -> int:
    """Integer value of a canonical address."""
    return int(ipaddress.ip_address(text))


def canonical_tunnel_ip(text: str) -> tuple[int, str] | None:
    """``(version, canonical text)`` of a tunnel address, v4-mapped IPv6 unmapped.

    None when ``text`` is not an IP address.  A dotted-quad IPv4 address
    takes ``inet_pton``/``inet_ntoa`` (C, ~10x cheaper than
    :mod:`ipaddress`; access-log batches carry one per entry): it accepts a
    subset of what :func:`ipaddress.ip_address` does (four decimal parts,
    no leading zeros, no spaces) and gives the same text; anything else
    takes :mod:`ipaddress`.
    """
    try:
        return 4, inet_ntoa(inet_pton(AF_INET, text))
    except (OSError, TypeError, ValueError):
        pass
    try:
        addr = ipaddress.ip_address(text.strip())
    except (ValueError, AttributeError):
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version, str(addr)
