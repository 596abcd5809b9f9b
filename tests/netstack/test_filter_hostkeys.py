"""A rule's host keys are a sorted tuple probed by bisection: the same
decisions as a set, for any keys, and shared between rules naming the same
peers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nbgateway.netstack.filter import (
    ALLOW,
    DENY,
    PacketFilter,
    Rule,
    RuleCompiler,
    has_host,
    host_keys,
)
from nbgateway.netstack.prefix import Prefix

keys = st.integers(min_value=0, max_value=(1 << 136) - 1)


@given(st.lists(keys, max_size=60), st.lists(keys, max_size=20))
def test_has_host_decides_as_a_set_does(stored, probes):
    hosts = host_keys(stored)
    assert list(hosts) == sorted(set(stored))
    for key in [*stored, *probes]:
        assert has_host(hosts, key) is (key in set(stored))


def test_empty_keys_match_nothing():
    assert host_keys([]) == () and not has_host((), 0)


def test_filter_decisions_by_host_for_both_families():
    rule = Rule.make(ALLOW, sources=["100.64.0.7/32", "100.64.0.3/32", "fd00::9/128",
                                     "10.1.0.0/16"], protocols=[6], ports=[80])
    f = PacketFilter([rule], default=DENY)
    v4 = bytes([100, 64, 0, 7]), bytes([100, 64, 0, 3]), bytes([100, 64, 0, 5])
    assert f.allows(v4[0], 6, 80) and f.allows(v4[1], 6, 80)
    assert not f.allows(v4[2], 6, 80)
    assert not f.allows(v4[0], 6, 81) and not f.allows(v4[0], 17, 80)
    assert f.allows(bytes([10, 1, 2, 3]), 6, 80)  # the wide prefix
    six = bytes.fromhex("fd00" + "00" * 13 + "09")
    assert f.allows(six, 6, 80)
    assert not f.allows(bytes.fromhex("fd00" + "00" * 13 + "0a"), 6, 80)
    # an IPv4 host never matches the IPv6 address with the same low bits
    assert not f.allows(bytes(12) + bytes([100, 64, 0, 7]), 6, 80)


def test_compiled_rules_share_one_host_tuple():
    peers = tuple(Prefix.parse(f"100.64.1.{i}/32") for i in range(20, 0, -1))
    c = RuleCompiler()
    c.begin()
    for port in (80, 443, 22):
        c.add(ALLOW, frozenset({6}), ((port, port),), None, peers)
    c.add(ALLOW, frozenset({1}), (), None, peers)
    rules = c.finish()
    assert len(rules) == 4
    first = rules[0]._hosts
    assert type(first) is tuple and list(first) == sorted(peers)
    assert all(r._hosts is first for r in rules)
