"""Special-purpose IP addresses: the vocabulary the gateway's dial guard
(:mod:`nbgateway.dial.guard`) and management's validation share.

Owns the blocks an address a tenant sets (a direct upstream, a peer's
endpoint) must never silently reach -- loopback, link-local, unspecified,
multicast, reserved, IPv4-compatible IPv6, cloud metadata endpoints
outside link-local -- with IPv4-mapped IPv6 judged as
its IPv4 address and a NAT64 well-known-prefix address also as the IPv4
address it reaches.  Pure functions of an :mod:`ipaddress` value.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: special blocks: (reason, block); an allow entry must lie inside the block
_SPECIAL: tuple[tuple[str, IPNetwork], ...] = (
    ("loopback", ipaddress.ip_network("127.0.0.0/8")),
    ("link_local", ipaddress.ip_network("169.254.0.0/16")),
    ("unspecified", ipaddress.ip_network("0.0.0.0/8")),
    ("multicast", ipaddress.ip_network("224.0.0.0/4")),
    ("reserved", ipaddress.ip_network("240.0.0.0/4")),
    ("loopback", ipaddress.ip_network("::1/128")),
    ("unspecified", ipaddress.ip_network("::/128")),
    ("link_local", ipaddress.ip_network("fe80::/10")),
    ("multicast", ipaddress.ip_network("ff00::/8")),
    ("ipv4_compatible", ipaddress.ip_network("::/96")),
    # cloud instance metadata outside link-local: AWS's IPv6 IMDS endpoint
    # (a ULA) and Alibaba Cloud's (in the CGNAT block)
    ("metadata", ipaddress.ip_network("fd00:ec2::254/128")),
    ("metadata", ipaddress.ip_network("100.100.100.200/32")),
)


def normalize(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes the IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


def nat64_embedded(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address a well-known-prefix NAT64 address translates to."""
    if isinstance(ip, ipaddress.IPv6Address) and ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def special_block(ip: IPAddress) -> tuple[str, IPNetwork] | None:
    """(reason, block) of a special-purpose address, else None."""
    for reason, block in _SPECIAL:
        if ip.version == block.version and ip in block:
            return reason, block
    return None


def special_reason(ip: IPAddress) -> str | None:
    """The special block's reason for ``ip`` (normalized first), or for the
    IPv4 address a NAT64 address reaches; None for an ordinary address."""
    ip = normalize(ip)
    embedded = nat64_embedded(ip)
    for candidate in (ip,) if embedded is None else (ip, embedded):
        special = special_block(candidate)
        if special is not None:
            return special[0]
    return None
