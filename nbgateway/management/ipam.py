"""Tunnel address management: per-account overlay networks and allocation.

Pure functions, no database: the store passes the addresses already in use
inside the same write transaction (which it serialises per account), so two
peers can never get the same address; a unique index backs this up.

* IPv4: the account network (default ``100.64.0.0/10``); the lowest free host
  address is handed out, skipping the network and broadcast addresses.
* IPv6: a per-account ULA ``/64`` (RFC 4193: ``fd`` + 40 random bits + subnet
  0), lowest free address from ``::1``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable

from nbgateway.management.errors import AddressExhausted, ValidationError

__all__ = [
    "allocate_ipv4",
    "allocate_ipv6",
    "canonical_tunnel_ip",
    "generate_ula_network",
    "parse_network",
]

# Upper bound on how far a single allocation scans (bounded work per request).
MAX_SCAN = 1 << 22


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


def canonical_tunnel_ip(text: str) -> tuple[int, str] | None:
    """``(version, canonical text)`` of a tunnel address, v4-mapped IPv6 unmapped.

    None when ``text`` is not an IP address.
    """
    try:
        addr = ipaddress.ip_address(text.strip())
    except (ValueError, AttributeError):
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version, str(addr)
