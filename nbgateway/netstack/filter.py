"""Per-stack inbound packet filter (the hook the private-service ACL fills).

Ordered rules, first match wins, default allow.  A :class:`Rule` matches on
source prefixes, WireGuard peer keys, protocol numbers and destination port
ranges; an empty field matches anything.  Ports only match TCP/UDP (a rule
with ports never matches ICMP).

Where the stack consults the filter (stateless rules applied to *new* flows
only, like "ESTABLISHED accepted, NEW checked" in a conntrack firewall):

* TCP segments with SYN set and ACK clear (connection attempts).  Other
  segments go to the TCP layer, which only accepts them for existing
  connections (or valid SYN cookies, which need a SYN-ACK that only an
  allowed SYN gets).  Tearing down connections when the ACL changes is the
  ACL owner's job.
* UDP datagrams to any port except sockets the stack allocated itself
  (ephemeral client sockets), including closed ports: a denied source gets
  no ICMP port unreachable.
* ICMP/ICMPv6 echo requests.

Denied packets are dropped silently and counted as ``drop_filtered``.

Compilation: sources are :class:`~nbgateway.netstack.prefix.Prefix` ints
(text and :mod:`ipaddress` networks are converted on the way in).  A rule
splits them into a set of host prefixes (``/32``, ``/128``: one hash probe
per packet, whatever the number of peers; the set holds the prefixes
themselves, no per-host object) and a short list of wider prefixes.  A
packet's probe key is built from its source with one shift and one or.
The host keys are a sorted tuple probed by bisection: O(log n) per new flow,
and a third of a ``frozenset``'s memory (a 20-peer account's set was 2.2 KiB
of its idle ~60 KiB).
Small port selections are matched by one set probe.

:class:`RuleCompiler` turns a map's rule list (often one rule per peer and
port) into a few merged rules: within a run of rules with the same action,
rules with the same protocols and ports are one rule with the union of their
sources (first match wins and they all decide alike, so the result is the
same).  A converted map's sources are host prefixes already, so compiling
one costs a type and length check; nothing is kept per owner between
compilations.
"""

from __future__ import annotations

import ipaddress
import itertools
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nbgateway.netstack.prefix import HOST_V4, HOST_V6, Prefix, as_prefix

ALLOW = "allow"
DENY = "deny"

Network = Prefix | ipaddress.IPv4Network | ipaddress.IPv6Network

#: port sets up to this many ports are matched by one set probe
_PORTSET_MAX = 256


def _compile(nets: Iterable[Prefix]) -> tuple[tuple[Prefix, ...], tuple[tuple[int, int, int], ...]]:
    """(host prefixes, wider prefixes as (version, network int, mask int)).
    A host prefix is its own key: nothing is allocated for it."""
    hosts: list[Prefix] = []
    wide: list[tuple[int, int, int]] = []
    for n in nets:
        if n.is_host:
            hosts.append(n)
        else:
            wide.append((n.version, n.address, n.mask))
    return tuple(hosts), tuple(wide)


#: host keys: sorted, no duplicates (see :func:`has_host`)
HostKeys = tuple[int, ...]


def host_keys(keys: Iterable[int]) -> HostKeys:
    """``keys`` as :data:`HostKeys` (sorted, duplicates dropped)."""
    return tuple(sorted(set(keys)))


def has_host(hosts: HostKeys, key: int) -> bool:
    """Whether ``key`` is one of ``hosts`` (bisection)."""
    i = bisect_left(hosts, key)
    return i < len(hosts) and hosts[i] == key


#: the port sets of every filter by their port ranges: accounts' rules name
#: the same few ports, so one set each, not one per rule and account (a
#: one-port frozenset is ~0.2 KiB); bounded, a miss past the bound builds its own
_PORTSETS: dict[tuple[tuple[int, int], ...], frozenset[int]] = {}
_PORTSETS_MAX = 4096


def _portset(ports: tuple[tuple[int, int], ...]) -> frozenset[int] | None:
    if not ports or sum(hi - lo + 1 for lo, hi in ports) > _PORTSET_MAX:
        return None
    got = _PORTSETS.get(ports)
    if got is None:
        got = frozenset(p for lo, hi in ports for p in range(lo, hi + 1))
        if len(_PORTSETS) < _PORTSETS_MAX:
            _PORTSETS[ports] = got
    return got


@dataclass(frozen=True, slots=True)
class Rule:
    """One filter rule.  ``sources``: prefixes (:class:`Prefix`, text or
    :mod:`ipaddress` networks; kept as :class:`Prefix`); ``ports``: ints or
    inclusive ``(low, high)`` ranges; ``protocols``: IP protocol numbers (6
    TCP, 17 UDP, 1 ICMP, 58 ICMPv6); ``peer_keys``: raw 32-byte WireGuard
    public keys."""

    action: str
    sources: tuple[Prefix, ...] = ()
    protocols: frozenset[int] = frozenset()
    ports: tuple[tuple[int, int], ...] = ()
    peer_keys: frozenset[bytes] = frozenset()
    _nets: tuple[tuple[int, int, int], ...] = field(default=(), repr=False, compare=False)
    _hosts: HostKeys = field(default=(), repr=False, compare=False)
    #: ``ports`` as a set when small (one probe per packet), else None
    _portset: frozenset[int] | None = field(default=None, init=False, repr=False,
                                            compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_portset", _portset(self.ports))

    @classmethod
    def make(
        cls, action: str, *, sources: Iterable[str | Network] = (),
        protocols: Iterable[int] = (), ports: Iterable[int | tuple[int, int]] = (),
        peer_keys: Iterable[bytes] = (),
    ) -> Rule:
        if action not in (ALLOW, DENY):
            raise ValueError(f"action must be {ALLOW!r} or {DENY!r}")
        nets = tuple(as_prefix(s) for s in sources)
        prs = []
        for p in ports:
            lo, hi = (p, p) if isinstance(p, int) else p
            if not 0 <= lo <= hi <= 0xFFFF:
                raise ValueError(f"bad port range {p!r}")
            prs.append((lo, hi))
        hosts, wide = _compile(nets)
        return cls(action, nets, frozenset(protocols), tuple(prs), frozenset(peer_keys), wide,
                   host_keys(hosts))

    def matches(
        self, version: int, src: int, protocol: int, port: int | None, peer_key: bytes | None,
    ) -> bool:
        return _matches(self, version, src,
                        (src << 8) | (HOST_V4 if version == 4 else HOST_V6),
                        protocol, port, peer_key)


def _matches(rule: Rule, version: int, src: int, key: int, protocol: int, port: int | None,
             peer_key: bytes | None) -> bool:
    if rule.protocols and protocol not in rule.protocols:
        return False
    portset = rule._portset
    if portset is not None:
        if port not in portset:
            return False
    elif rule.ports and (port is None or not any(lo <= port <= hi for lo, hi in rule.ports)):
        return False
    if rule.peer_keys and peer_key not in rule.peer_keys:
        return False
    hosts, nets = rule._hosts, rule._nets
    if hosts or nets:
        if hosts and has_host(hosts, key):
            return True
        return any(v == version and src & m == n for v, n, m in nets)
    return True


class PacketFilter:
    """Ordered rule list with a default action.  ``active`` is False while
    there are no rules and the default is allow, so the stack skips it."""

    def __init__(self, rules: Iterable[Rule] = (), default: str = ALLOW) -> None:
        self.rules: tuple[Rule, ...] = ()
        self.default = ALLOW
        self.active = False
        self.set_rules(rules, default)

    def set_rules(self, rules: Iterable[Rule], default: str = ALLOW) -> None:
        """Atomically replace the rules and the default action."""
        if default not in (ALLOW, DENY):
            raise ValueError(f"default must be {ALLOW!r} or {DENY!r}")
        self.rules = tuple(rules)
        self.default = default
        self.active = bool(self.rules) or default != ALLOW

    def allows(
        self, src: bytes, protocol: int, port: int | None = None, peer_key: bytes | None = None,
    ) -> bool:
        """Decide for a packet from raw source address ``src`` to destination
        ``port`` (None for ICMP)."""
        s = int.from_bytes(src, "big")
        if len(src) == 4:
            version, key = 4, (s << 8) | HOST_V4
        else:
            version, key = 6, (s << 8) | HOST_V6
        for rule in self.rules:
            if _matches(rule, version, s, key, protocol, port, peer_key):
                return rule.action == ALLOW
        return self.default == ALLOW


class _Group:
    __slots__ = ("action", "any_source", "hosts", "ports", "protocols", "sources", "wide")

    def __init__(self, action: str, protocols: frozenset[int],
                 ports: tuple[tuple[int, int], ...]) -> None:
        self.action = action
        self.protocols = protocols
        self.ports = ports
        self.sources: list[tuple[Prefix, ...]] = []
        self.hosts: list[tuple[Prefix, ...]] = []
        self.wide: dict[tuple[int, int, int], None] = {}
        self.any_source = False

    def rule(self, shared: dict[Any, Any]) -> Rule:
        if self.any_source:
            return Rule(self.action, (), self.protocols, self.ports)
        sources = tuple(itertools.chain.from_iterable(self.sources))
        hosts = host_keys(itertools.chain.from_iterable(self.hosts))
        # rules naming the same peers (one per port, DNS, ping) share one
        # host tuple and one source tuple
        hosts = shared.setdefault(hosts, hosts)
        sources = shared.setdefault(sources, sources)
        return Rule(self.action, sources, self.protocols, self.ports, frozenset(),
                    tuple(self.wide), hosts)


def _all_hosts(sources: tuple[Any, ...]) -> bool:
    """True when every source is a host :class:`Prefix` (its own filter key)."""
    return all(type(n) is Prefix and n & 0xFF == (128 if n >> 136 else 32) for n in sources)


class RuleCompiler:
    """Merging compiler for one filter (see the module docstring).

    ``begin()``, then ``add()`` each rule in order, then ``finish()`` returns
    the merged rules.  ``owner`` is the object the sources belong to (a
    converted map rule, a roster peer).  Sources that are host
    :class:`Prefix` values (every source of a peer storm's rules) go into the
    host set as they are: nothing is converted or allocated per source, and
    nothing is remembered between compilations (no per-owner memo).  Other
    sources (text, :mod:`ipaddress` networks, wider prefixes) are converted
    on each compilation and counted in :attr:`compiled_sources`.  Empty
    ``sources`` match any source."""

    def __init__(self) -> None:
        self._runs: list[dict[tuple[Any, ...], _Group]] = []
        self._run_action = ""
        #: sources the last compilation had to convert (not host prefixes)
        self.compiled_sources = 0

    def begin(self) -> None:
        self._runs = []
        self._run_action = ""
        self.compiled_sources = 0

    def add(self, action: str, protocols: Iterable[int], ports: Iterable[tuple[int, int]],
            owner: object, sources: Iterable[Network | str]) -> None:
        del owner  # sources are compiled without a memo (see the class docstring)
        if action != self._run_action:
            if action not in (ALLOW, DENY):
                raise ValueError(f"action must be {ALLOW!r} or {DENY!r}")
            self._runs.append({})
            self._run_action = action
        protos = protocols if type(protocols) is frozenset else frozenset(protocols)
        prs = ports if type(ports) is tuple else tuple(ports)
        run = self._runs[-1]
        key = (protos, prs)
        group = run.get(key)
        if group is None:
            for lo, hi in prs:
                if not 0 <= lo <= hi <= 0xFFFF:
                    raise ValueError(f"bad port range {(lo, hi)!r}")
            group = run[key] = _Group(action, protos, prs)
        srcs = sources if type(sources) is tuple else tuple(sources)
        if not srcs:
            group.any_source = True
            return
        if _all_hosts(srcs):
            group.sources.append(srcs)
            group.hosts.append(srcs)
            return
        nets = tuple(as_prefix(n) for n in srcs)
        self.compiled_sources += len(nets)
        hosts, wide = _compile(nets)
        group.sources.append(nets)
        group.hosts.append(hosts)
        for w in wide:
            group.wide[w] = None

    def finish(self) -> list[Rule]:
        shared: dict[Any, Any] = {}
        rules = [g.rule(shared) for run in self._runs for g in run.values()]
        self._runs, self._run_action = [], ""
        return rules
