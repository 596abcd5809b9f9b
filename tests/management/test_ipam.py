"""Tunnel address allocation: uniqueness, exhaustion, ULA networks, canonical lookups."""

from __future__ import annotations

import ipaddress

import pytest

from nbgateway.management import ipam
from nbgateway.management.errors import AddressExhausted, ValidationError


def test_ipv4_lowest_free_skips_network_address():
    assert ipam.allocate_ipv4("100.64.0.0/10", []) == "100.64.0.1"
    assert ipam.allocate_ipv4("100.64.0.0/10", ["100.64.0.1", "100.64.0.3"]) == "100.64.0.2"


def test_ipv4_unique_until_exhausted():
    used: list[str] = []
    for _ in range(6):  # /29: 8 addresses, minus network and broadcast
        used.append(ipam.allocate_ipv4("10.0.0.0/29", used))
    assert len(set(used)) == 6
    assert "10.0.0.0" not in used and "10.0.0.7" not in used
    with pytest.raises(AddressExhausted, match="no free IPv4 address"):
        ipam.allocate_ipv4("10.0.0.0/29", used)


def test_ipv4_reuses_freed_address():
    used = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    used.remove("10.0.0.2")
    assert ipam.allocate_ipv4("10.0.0.0/29", used) == "10.0.0.2"


def test_ula_network_is_rfc4193_slash64():
    nets = {ipam.generate_ula_network() for _ in range(50)}
    assert len(nets) > 45
    for text in nets:
        net = ipaddress.IPv6Network(text)
        assert net.prefixlen == 64
        assert net.network_address.packed[0] == 0xFD


def test_ipv6_allocation():
    net = ipam.generate_ula_network()
    first = ipam.allocate_ipv6(net, [])
    second = ipam.allocate_ipv6(net, [first])
    assert ipaddress.IPv6Address(first) in ipaddress.IPv6Network(net)
    assert first != second


@pytest.mark.parametrize("bad", ["100.64.0.1/10", "nonsense", "10.0.0.0/31", "fd00::/64"])
def test_bad_v4_network_rejected(bad):
    with pytest.raises(ValidationError):
        ipam.allocate_ipv4(bad, [])


def test_canonical_tunnel_ip():
    assert ipam.canonical_tunnel_ip("100.64.0.10") == (4, "100.64.0.10")
    assert ipam.canonical_tunnel_ip("::ffff:100.64.0.10") == (4, "100.64.0.10")
    assert ipam.canonical_tunnel_ip("FD00:0::1") == (6, "fd00::1")
    assert ipam.canonical_tunnel_ip("not-an-ip") is None


def _by_ipaddress(text):
    """The reference: what ipaddress alone makes of ``text``."""
    import ipaddress

    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version, str(addr)


@pytest.mark.parametrize("text", [
    "0.0.0.0", "255.255.255.255", "1.2.3.4", " 1.2.3.4", "1.2.3.4 ", "\t10.0.0.1\n",
    "01.2.3.4", "1.2.3.04", "1.2.3.256", "1.2.3", "1.2.3.4.5", "1..3.4", "0x1.2.3.4",
    "1.2.3.-4", "+1.2.3.4", "1.2.3.4\x00", "\u0661.2.3.4", "\uff11.2.3.4", "", " ",
    "::ffff:1.2.3.4", "::1.2.3.4", "fd00::1", "1.2.3.4%eth0", "1.2.3.4/32",
])
def test_canonical_tunnel_ip_equals_ipaddress(text):
    assert ipam.canonical_tunnel_ip(text) == _by_ipaddress(text)


def test_canonical_tunnel_ip_equals_ipaddress_on_random_quads():
    import random

    rng = random.Random(7)
    parts = ["0", "00", "01", "9", "10", "99", "255", "256", "300", "007", "1", "25", "250"]
    for _ in range(5000):
        text = ".".join(rng.choice(parts) for _ in range(rng.choice((3, 4, 4, 4, 5))))
        assert ipam.canonical_tunnel_ip(text) == _by_ipaddress(text), text
