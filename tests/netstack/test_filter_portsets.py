"""Rules with the same ports share one port set (across filters and
accounts); matching is unchanged, and the shared table is bounded."""

from __future__ import annotations

from nbgateway.netstack import filter as filter_mod
from nbgateway.netstack.filter import ALLOW, DENY, PacketFilter, Rule, RuleCompiler

SRC = bytes([100, 64, 0, 1])


def test_rules_with_the_same_ports_share_one_set():
    a = Rule.make(ALLOW, sources=["100.64.0.1/32"], protocols=[6], ports=[80, (8000, 8002)])
    b = Rule.make(ALLOW, sources=["100.64.0.2/32"], protocols=[6], ports=[80, (8000, 8002)])
    assert a._portset is b._portset == frozenset({80, 8000, 8001, 8002})
    assert Rule.make(ALLOW, ports=[443])._portset is not a._portset


def test_compiled_rules_of_two_filters_share_the_set_and_match_as_before():
    filters = []
    for peer in ("100.64.0.1/32", "100.64.0.2/32"):
        compiler = RuleCompiler()
        compiler.begin()
        compiler.add(ALLOW, [6], ((443, 443),), None, (peer,))
        filters.append(PacketFilter(compiler.finish(), default=DENY))
    one, two = filters
    assert one.rules[0]._portset is two.rules[0]._portset
    assert one.allows(SRC, 6, 443) and not one.allows(SRC, 6, 80)
    assert not two.allows(SRC, 6, 443)


def test_wide_port_ranges_have_no_set_and_still_match():
    rule = Rule.make(ALLOW, protocols=[6], ports=[(1000, 2000)])
    assert rule._portset is None
    f = PacketFilter([rule], default=DENY)
    assert f.allows(SRC, 6, 1500) and not f.allows(SRC, 6, 999)


def test_the_shared_table_is_bounded(monkeypatch):
    monkeypatch.setattr(filter_mod, "_PORTSETS", {})
    monkeypatch.setattr(filter_mod, "_PORTSETS_MAX", 2)
    rules = [Rule.make(ALLOW, ports=[p]) for p in (1, 2, 3, 3)]
    assert len(filter_mod._PORTSETS) == 2
    assert [r._portset for r in rules] == [frozenset({p}) for p in (1, 2, 3, 3)]
    assert rules[2]._portset is not rules[3]._portset  # past the bound: its own set
    f = PacketFilter(rules[2:], default=DENY)
    assert f.allows(SRC, 6, 3) and not f.allows(SRC, 6, 4)
