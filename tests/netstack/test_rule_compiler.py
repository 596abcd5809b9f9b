"""The filter's rule compiler: merged rules decide exactly like the rule list
they come from, host prefixes are taken as they are (no copy, no memo), and
no text is parsed."""

from __future__ import annotations

import ipaddress
import random

import pytest

from nbgateway.netstack import filter as pf
from nbgateway.netstack.filter import ALLOW, DENY, PacketFilter, Rule, RuleCompiler
from nbgateway.netstack.prefix import Prefix


def net(text):
    return ipaddress.ip_network(text)


class Spec:
    """An immutable rule entry, as the map converter hands them out
    (``Prefix`` sources; ``ipaddress`` networks with ``parse=net``)."""

    def __init__(self, action, sources, protocols=(), ports=(), parse=Prefix.parse):
        self.action, self.sources = action, tuple(parse(s) for s in sources)
        self.protocols, self.ports = frozenset(protocols), tuple(ports)


def compile_all(compiler, specs):
    compiler.begin()
    for s in specs:
        compiler.add(s.action, s.protocols, s.ports, s, s.sources)
    return compiler.finish()


def reference(specs):
    return [Rule.make(s.action, sources=s.sources, protocols=s.protocols, ports=s.ports)
            for s in specs]


def test_merged_rules_decide_like_the_rule_list():
    rng = random.Random(7)
    specs = []
    for _ in range(300):
        action = rng.choice([ALLOW, ALLOW, ALLOW, DENY])
        sources = [f"100.64.{rng.randrange(4)}.{rng.randrange(1, 20)}/32"
                   for _ in range(rng.randrange(1, 3))]
        if rng.random() < 0.1:
            sources.append(f"100.64.{rng.randrange(4)}.0/28")
        if rng.random() < 0.1:
            sources.append(f"fd00::{rng.randrange(1, 20):x}/128")
        proto = rng.choice([(6,), (17,), (6, 17), (1, 58), ()])
        ports = rng.choice([((80, 80),), ((443, 443),), ((8000, 8999),), ()]) \
            if proto in ((6,), (17,), (6, 17)) else ()
        specs.append(Spec(action, sources, proto, ports))
    # as the converter orders them (deny first): one rule per action, protocols, ports
    ordered = [s for s in specs if s.action == DENY] + [s for s in specs if s.action == ALLOW]
    kinds = {(s.action, s.protocols, s.ports) for s in specs}
    assert len(compile_all(RuleCompiler(), ordered)) == len(kinds) < len(specs) / 10
    for entries, default in [(specs, ALLOW), (specs, DENY), (ordered, DENY)]:
        want = PacketFilter(reference(entries), default=default)
        got = PacketFilter(compile_all(RuleCompiler(), entries), default=default)
        for _ in range(3000):
            if rng.random() < 0.9:
                src = ipaddress.ip_address(f"100.64.{rng.randrange(5)}.{rng.randrange(1, 22)}")
            else:
                src = ipaddress.ip_address(f"fd00::{rng.randrange(1, 22):x}")
            proto = rng.choice([6, 17, 1, 58])
            port = rng.choice([80, 443, 8080, 22]) if proto in (6, 17) else None
            assert got.allows(src.packed, proto, port) == want.allows(src.packed, proto, port), \
                (src, proto, port)


def test_host_prefixes_are_taken_as_they_are():
    compiler = RuleCompiler()
    peers = [Spec(ALLOW, [f"100.64.{i // 250}.{i % 250 + 1}/32", f"fd00::{i + 1:x}/128"], (6,),
                  ((443, 443),)) for i in range(2000)]
    rules = compile_all(compiler, peers)
    assert compiler.compiled_sources == 0 and len(rules) == 1
    # the host set holds the owners' own prefix objects (nothing allocated per host)
    mine = {id(p) for s in peers for p in s.sources}
    assert len(rules[0]._hosts) == 4000 and {id(h) for h in rules[0]._hosts} == mine
    newcomer = Spec(ALLOW, ["100.64.99.1/32", "fd00::ffff/128"], (6,), ((443, 443),))
    rules = compile_all(compiler, [*peers, newcomer])
    assert compiler.compiled_sources == 0
    f = PacketFilter(rules, default=DENY)
    assert f.allows(ipaddress.ip_address("100.64.99.1").packed, 6, 443)
    assert f.allows(ipaddress.ip_address("fd00::5").packed, 6, 443)
    assert not f.allows(ipaddress.ip_address("100.64.99.2").packed, 6, 443)
    # a peer gone is forgotten: nothing is remembered between compilations
    rules = compile_all(compiler, peers[1:])
    assert not PacketFilter(rules, default=DENY).allows(
        ipaddress.ip_address("100.64.0.1").packed, 6, 443)
    assert not hasattr(compiler, "_memo")


def test_other_sources_are_converted_and_counted():
    compiler = RuleCompiler()
    specs = [Spec(ALLOW, ["100.64.0.1/32", "fd00::1/128"], (6,), parse=net),
             Spec(ALLOW, ["100.64.1.0/24"], (6,))]
    rules = compile_all(compiler, specs)
    assert compiler.compiled_sources == 3
    f = PacketFilter(rules, default=DENY)
    for ip, want in [("100.64.0.1", True), ("fd00::1", True), ("100.64.1.200", True),
                     ("100.64.0.2", False), ("fd00::2", False)]:
        assert f.allows(ipaddress.ip_address(ip).packed, 6, 80) is want, ip


def test_an_entry_without_sources_matches_any_source():
    rules = compile_all(RuleCompiler(), [Spec(ALLOW, ["100.64.0.1/32"], (6,), ((80, 80),)),
                                         Spec(ALLOW, [], (6,), ((80, 80),))])
    assert PacketFilter(rules, default=DENY).allows(
        ipaddress.ip_address("10.1.2.3").packed, 6, 80)


def test_deny_runs_keep_their_place():
    specs = [Spec(ALLOW, ["100.64.0.0/24"], (6,)), Spec(DENY, ["100.64.0.5/32"], (6,)),
             Spec(ALLOW, ["100.64.0.5/32"], (6,))]
    f = PacketFilter(compile_all(RuleCompiler(), specs), default=DENY)
    assert f.allows(ipaddress.ip_address("100.64.0.5").packed, 6, 80)  # first rule wins
    f = PacketFilter(compile_all(RuleCompiler(), specs[1:]), default=DENY)
    assert not f.allows(ipaddress.ip_address("100.64.0.5").packed, 6, 80)


def test_bad_input_is_refused():
    c = RuleCompiler()
    c.begin()
    with pytest.raises(ValueError):
        c.add("maybe", (), (), object(), ())
    with pytest.raises(ValueError):
        c.add(ALLOW, (6,), ((10, 5),), object(), ())


def test_rule_make_converts_networks_without_parsing_text(monkeypatch):
    nets = [net("100.64.0.1/32"), net("100.64.1.0/24"), net("fd00::1/128")]

    def no_parsing(*_a, **_kw):
        raise AssertionError("a network object was parsed again")

    monkeypatch.setattr(pf.ipaddress, "ip_network", no_parsing)
    rule = Rule.make(ALLOW, sources=nets)
    assert [str(p) for p in rule.sources] == [str(n) for n in nets]
    prefixes = tuple(Prefix.from_network(n) for n in nets)
    assert Rule.make(ALLOW, sources=prefixes).sources == prefixes
    f = PacketFilter([rule], default=DENY)
    assert f.allows(ipaddress.ip_address("100.64.0.1").packed, 6, 1)
    assert f.allows(ipaddress.ip_address("100.64.1.77").packed, 6, 1)
    assert f.allows(ipaddress.ip_address("fd00::1").packed, 6, 1)
    assert not f.allows(ipaddress.ip_address("100.64.0.2").packed, 6, 1)
    assert not f.allows(ipaddress.ip_address("fd00::2").packed, 6, 1)
