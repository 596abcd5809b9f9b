"""cookie.address_bytes (what a cookie is bound to): the packed address and port,
the same bytes ``ipaddress`` gives, for every form a UDP source address takes."""

from __future__ import annotations

import ipaddress

import pytest

from nbgateway.wireguard.cookie import address_bytes


@pytest.mark.parametrize("host", [
    "198.51.100.7", "0.0.0.0", "255.255.255.255", "2001:db8::1", "::1", "::",
    "::ffff:192.0.2.1", "fe80::1%eth0", "FD00:64::2", "2001:db8:0:0:0:0:0:1",
])
def test_matches_ipaddress_packed(host: str) -> None:
    packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
    assert address_bytes((host, 51820)) == packed + (51820).to_bytes(2, "big")


@pytest.mark.parametrize("host", ["01.2.3.4", "1.2.3", "1.2.3.4 ", "gw.example", ""])
def test_what_ipaddress_rejects_is_taken_as_text(host: str) -> None:
    with pytest.raises(ValueError):
        ipaddress.ip_address(host)
    assert address_bytes((host, 7)) == host.encode() + b"\x00\x07"


def test_port_and_scope_distinguish_or_not() -> None:
    assert address_bytes(("192.0.2.1", 1)) != address_bytes(("192.0.2.1", 2))
    assert address_bytes(("fe80::1%eth0", 1)) == address_bytes(("fe80::1%eth1", 1))
