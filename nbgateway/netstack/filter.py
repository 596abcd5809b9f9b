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

Compilation: :meth:`Rule.make` takes network objects as they are (text is
parsed once and memoized), and splits sources into a set of host addresses
(``/32``, ``/128``: one hash probe per packet, whatever the number of peers)
and a short list of wider prefixes.  A network map whose rule names every
roster peer therefore costs a few integer operations per source to compile
and O(1) per packet to match.

:class:`RuleCompiler` turns a map's rule list (often one rule per peer and
port) into a few merged rules: within a run of rules with the same action,
rules with the same protocols and ports are one rule with the union of their
sources (first match wins and they all decide alike, so the result is the
same), and each source owner's compiled form is remembered by identity from
one compilation to the next (the converter hands out the same objects for
unchanged entries), so an unchanged rule costs one dictionary probe.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ALLOW = "allow"
DENY = "deny"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NETWORK_TYPES = (ipaddress.IPv4Network, ipaddress.IPv6Network)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


def _as_network(source: str | Network) -> Network:
    """A network object as it is; text parsed once (memoized)."""
    if isinstance(source, _NETWORK_TYPES):
        return source
    return _parse(source)


#: host keys: an IPv4 address is its integer, an IPv6 address its integer
#: with this bit set (one int per host, no tuple)
_V6 = 1 << 128


def _compile(nets: Iterable[Network]) -> tuple[tuple[int, ...], tuple[tuple[int, int, int], ...]]:
    hosts: list[int] = []
    wide: list[tuple[int, int, int]] = []
    for n in nets:
        addr = int(n.network_address)
        if n.prefixlen == n.max_prefixlen:
            hosts.append(addr if n.version == 4 else addr | _V6)
        else:
            wide.append((n.version, addr, int(n.netmask)))
    return tuple(hosts), tuple(wide)


def compile_sources(
    nets: Iterable[Network],
) -> tuple[frozenset[int], tuple[tuple[int, int, int], ...]]:
    """(host address keys, wider prefixes as (version, network int, mask
    int)).  No parsing and no string forms."""
    hosts, wide = _compile(nets)
    return frozenset(hosts), wide


@dataclass(frozen=True)
class Rule:
    """One filter rule.  ``sources``: prefixes (str or networks); ``ports``:
    ints or inclusive ``(low, high)`` ranges; ``protocols``: IP protocol
    numbers (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6); ``peer_keys``: raw 32-byte
    WireGuard public keys."""

    action: str
    sources: tuple[Network, ...] = ()
    protocols: frozenset[int] = frozenset()
    ports: tuple[tuple[int, int], ...] = ()
    peer_keys: frozenset[bytes] = frozenset()
    _nets: tuple[tuple[int, int, int], ...] = field(default=(), repr=False, compare=False)
    _hosts: frozenset[int] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def make(
        cls, action: str, *, sources: Iterable[str | Network] = (),
        protocols: Iterable[int] = (), ports: Iterable[int | tuple[int, int]] = (),
        peer_keys: Iterable[bytes] = (),
    ) -> Rule:
        if action not in (ALLOW, DENY):
            raise ValueError(f"action must be {ALLOW!r} or {DENY!r}")
        nets = tuple(_as_network(s) for s in sources)
        prs = []
        for p in ports:
            lo, hi = (p, p) if isinstance(p, int) else p
            if not 0 <= lo <= hi <= 0xFFFF:
                raise ValueError(f"bad port range {p!r}")
            prs.append((lo, hi))
        hosts, wide = compile_sources(nets)
        return cls(action, nets, frozenset(protocols), tuple(prs), frozenset(peer_keys), wide,
                   hosts)

    def matches(
        self, version: int, src: int, protocol: int, port: int | None, peer_key: bytes | None,
    ) -> bool:
        if self.protocols and protocol not in self.protocols:
            return False
        if self.ports and (port is None or not any(lo <= port <= hi for lo, hi in self.ports)):
            return False
        if self.peer_keys and peer_key not in self.peer_keys:
            return False
        if self._hosts or self._nets:
            if (src if version == 4 else src | _V6) in self._hosts:
                return True
            return any(v == version and src & m == n for v, n, m in self._nets)
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
        version = 4 if len(src) == 4 else 6
        s = int.from_bytes(src, "big")
        for rule in self.rules:
            if rule.matches(version, s, protocol, port, peer_key):
                return rule.action == ALLOW
        return self.default == ALLOW


#: an owner and its compiled sources (hosts, wide prefixes)
_Part = tuple[object, tuple[int, ...], tuple[tuple[int, int, int], ...]]


class _Group:
    __slots__ = ("action", "any_source", "hosts", "ports", "protocols", "sources", "wide")

    def __init__(self, action: str, protocols: frozenset[int],
                 ports: tuple[tuple[int, int], ...]) -> None:
        self.action = action
        self.protocols = protocols
        self.ports = ports
        self.sources: list[Iterable[Network]] = []
        self.hosts: list[tuple[int, ...]] = []
        self.wide: dict[tuple[int, int, int], None] = {}
        self.any_source = False

    def rule(self, shared: dict[frozenset[int], frozenset[int]]) -> Rule:
        if self.any_source:
            return Rule(self.action, (), self.protocols, self.ports)
        sources = tuple(itertools.chain.from_iterable(self.sources))  # no hashing
        hosts = frozenset(itertools.chain.from_iterable(self.hosts))
        # rules naming the same peers (one per port, DNS, ping) share one set
        hosts = shared.setdefault(hosts, hosts)
        return Rule(self.action, sources, self.protocols, self.ports, frozenset(),
                    tuple(self.wide), hosts)


class RuleCompiler:
    """Merging compiler for one filter (see the module docstring).

    ``begin()``, then ``add()`` each rule in order, then ``finish()`` returns
    the merged rules.  ``owner`` is the immutable object the sources belong
    to (a converted map rule, a roster peer): its compiled sources are reused
    while the same object comes back.  Empty ``sources`` match any source.
    Memory: the memo holds only the owners of the last compilation."""

    def __init__(self) -> None:
        self._memo: dict[int, _Part] = {}
        self._next: dict[int, _Part] = {}
        self._runs: list[dict[tuple[Any, ...], _Group]] = []
        self._run_action = ""
        #: sources compiled (not found in the memo) by the last compilation
        self.compiled_sources = 0

    def begin(self) -> None:
        self._next = {}
        self._runs = []
        self._run_action = ""
        self.compiled_sources = 0

    def add(self, action: str, protocols: Iterable[int], ports: Iterable[tuple[int, int]],
            owner: object, sources: Iterable[Network]) -> None:
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
        oid = id(owner)
        hit = self._next.get(oid) or self._memo.get(oid)
        if hit is None or hit[0] is not owner:
            nets = tuple(sources)
            hit = (owner, *_compile(nets))
            self.compiled_sources += len(nets)
        self._next[oid] = hit
        _, hosts, wide = hit
        if not hosts and not wide:
            group.any_source = True
            return
        group.sources.append(sources)
        group.hosts.append(hosts)
        for w in wide:
            group.wide[w] = None

    def finish(self) -> list[Rule]:
        shared: dict[frozenset[int], frozenset[int]] = {}
        rules = [g.rule(shared) for run in self._runs for g in run.values()]
        self._memo, self._next, self._runs, self._run_action = self._next, {}, [], ""
        return rules
