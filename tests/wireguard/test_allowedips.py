"""Cryptokey routing table against a brute-force longest-prefix scan."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.wireguard.allowedips import AllowedIPs


def v4_networks():
    return st.builds(
        lambda a, p: ipaddress.ip_network((a, p), strict=False),
        st.integers(0, 2**32 - 1), st.integers(0, 32))


def v6_networks():
    return st.builds(
        lambda a, p: ipaddress.ip_network((a, p), strict=False),
        st.integers(0, 2**128 - 1), st.integers(0, 128))


def brute(entries: dict, addr):
    best, best_len = None, -1
    for net, value in entries.items():
        if net.version == addr.version and addr in net and net.prefixlen > best_len:
            best, best_len = value, net.prefixlen
    return best


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(v4_networks(), v6_networks()), st.integers(0, 5)), max_size=40),
    st.lists(st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                       st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)), max_size=40),
    st.data(),
)
def test_matches_brute_force(inserts, probes, data):
    table: AllowedIPs[int] = AllowedIPs()
    model: dict = {}
    for net, value in inserts:
        table.insert(net, value)
        model[net] = value
    # remove a random subset, as roster changes do
    for net in list(model):
        if data.draw(st.booleans()):
            table.remove(net)
            del model[net]
    # probe also inside inserted networks so hits are common
    probes = probes + [net.network_address for net in model]
    for addr in probes:
        assert table.lookup(addr) == brute(model, addr)
        assert table.lookup_packed(addr.packed) == brute(model, addr)


def test_prefix_moves_between_values():
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.0.0.0/24", "a")
    t.insert("10.0.0.0/24", "b")
    assert t.lookup("10.0.0.9") == "b"
    assert t.networks_of("a") == ()
    t.remove_value("b")
    assert t.lookup("10.0.0.9") is None and len(t) == 0


def test_bad_packed_length():
    assert AllowedIPs().lookup_packed(b"\x01\x02\x03") is None
