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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

ALLOW = "allow"
DENY = "deny"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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

    @classmethod
    def make(
        cls, action: str, *, sources: Iterable[str | Network] = (),
        protocols: Iterable[int] = (), ports: Iterable[int | tuple[int, int]] = (),
        peer_keys: Iterable[bytes] = (),
    ) -> Rule:
        if action not in (ALLOW, DENY):
            raise ValueError(f"action must be {ALLOW!r} or {DENY!r}")
        nets = tuple(ipaddress.ip_network(s, strict=False) for s in sources)
        prs = []
        for p in ports:
            lo, hi = (p, p) if isinstance(p, int) else p
            if not 0 <= lo <= hi <= 0xFFFF:
                raise ValueError(f"bad port range {p!r}")
            prs.append((lo, hi))
        masks = tuple(
            (n.version, int(n.network_address), int(n.netmask)) for n in nets
        )
        return cls(action, nets, frozenset(protocols), tuple(prs), frozenset(peer_keys), masks)

    def matches(
        self, version: int, src: int, protocol: int, port: int | None, peer_key: bytes | None,
    ) -> bool:
        if self.protocols and protocol not in self.protocols:
            return False
        if self.ports and (port is None or not any(lo <= port <= hi for lo, hi in self.ports)):
            return False
        if self.peer_keys and peer_key not in self.peer_keys:
            return False
        if self._nets:
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
