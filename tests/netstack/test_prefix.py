"""Compact prefixes against the ``ipaddress`` reference on random prefixes:
the encoding round-trips, membership and the filter's decisions are exactly
those of ``ipaddress`` networks."""

from __future__ import annotations

import ipaddress
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.netstack.filter import ALLOW, DENY, PacketFilter, Rule, RuleCompiler
from nbgateway.netstack.prefix import HOST_V4, HOST_V6, Prefix, as_prefix

v4_networks = st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
                        st.integers(0, 2**32 - 1), st.integers(0, 32))
v6_networks = st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
                        st.integers(0, 2**128 - 1), st.integers(0, 128))
networks = st.one_of(v4_networks, v6_networks)
addresses = st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                      st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address))


@settings(max_examples=300, deadline=None)
@given(networks, addresses)
def test_prefix_is_the_network(net, addr):
    p = Prefix.from_network(net)
    assert (p.version, p.prefixlen, p.max_prefixlen) == (net.version, net.prefixlen,
                                                        net.max_prefixlen)
    assert p.address == int(net.network_address) and p.mask == int(net.netmask)
    assert p.network_address == net.network_address and p.network() == net
    assert str(p) == str(net) and Prefix.parse(str(net)) == p
    assert Prefix.from_packed(net.network_address.packed, net.prefixlen) == p
    assert p.is_host == (net.prefixlen == net.max_prefixlen)
    assert p.contains(addr.version, int(addr)) == (addr.version == net.version and addr in net)
    assert pickle.loads(pickle.dumps(p)) == p


@settings(max_examples=200, deadline=None)
@given(networks, st.integers(0, 128))
def test_host_bits_are_cleared_like_strict_false(net, length):
    length = min(length, net.max_prefixlen)
    addr = int(net.network_address) | (int(net.hostmask) & 0x5A5A5A5A)
    want = type(net)((addr, length), strict=False)
    assert Prefix.of(net.version, addr, length) == Prefix.from_network(want)


def test_bad_values_are_refused():
    for version, addr, length in [(4, 0, 33), (6, 0, 129), (4, 1 << 32, 8), (5, 0, 0),
                                  (4, -1, 8)]:
        with pytest.raises(ValueError):
            Prefix.of(version, addr, length)
    with pytest.raises(ValueError):
        Prefix.parse("100.64.0.300/32")
    with pytest.raises(ValueError):
        Prefix.from_packed(b"\x01\x02\x03", 8)
    with pytest.raises(TypeError):
        as_prefix(7)  # an int could be an address: refused


def test_host_keys_and_families_never_collide():
    v4 = Prefix.parse("0.0.0.1/32")
    v6 = Prefix.parse("::1/128")
    assert v4 != v6 and v4 == (1 << 8) | HOST_V4 and v6 == (1 << 8) | HOST_V6
    # a v4 /32 and a v6 /32 of the same bits differ
    assert Prefix.of(4, 0, 0) != Prefix.of(6, 0, 0)


def _reference(rules, default, src, proto, port):
    """First match wins, on ipaddress objects (the filter's documented rules)."""
    for action, nets, protos, ports in rules:
        if protos and proto not in protos:
            continue
        if ports and (port is None or not any(lo <= port <= hi for lo, hi in ports)):
            continue
        if nets and not any(src.version == n.version and src in n for n in nets):
            continue
        return action == ALLOW
    return default == ALLOW


rule_specs = st.lists(st.tuples(
    st.sampled_from([ALLOW, DENY]),
    st.lists(networks, max_size=4),
    st.sampled_from([(), (6,), (17,), (6, 17), (1, 58)]),
    st.sampled_from([(), ((80, 80),), ((443, 443),), ((1000, 2000),), ((0, 65535),)]),
), max_size=8)


@settings(max_examples=150, deadline=None)
@given(rule_specs, st.sampled_from([ALLOW, DENY]), st.lists(addresses, max_size=20),
       st.data())
def test_filter_decides_like_the_ipaddress_reference(specs, default, probes, data):
    made = PacketFilter([Rule.make(a, sources=n, protocols=p, ports=r) for a, n, p, r in specs],
                        default=default)
    compiler = RuleCompiler()
    compiler.begin()
    for a, n, p, r in specs:
        srcs = tuple(Prefix.from_network(x) for x in n)
        compiler.add(a, frozenset(p), r, srcs, srcs)
    compiled = PacketFilter(compiler.finish(), default=default)
    # probe inside the rules' networks too, so matches are common
    probes = probes + [n.network_address for _, nets, _, _ in specs for n in nets]
    for src in probes:
        proto = data.draw(st.sampled_from([6, 17, 1, 58]))
        port = data.draw(st.sampled_from([80, 443, 1500, 22])) if proto in (6, 17) else None
        want = _reference(specs, default, src, proto, port)
        assert made.allows(src.packed, proto, port) == want
        assert compiled.allows(src.packed, proto, port) == want
