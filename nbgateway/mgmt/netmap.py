"""NetworkMap protobuf -> plain frozen values the per-account runtime applies.

Pure and total: :func:`convert` never raises on peer-channel input.  Every
entry it cannot use (an unparsable key, address, prefix, record or port) is
skipped and counted in :attr:`AccountNetwork.skipped` by reason, so a bad
entry costs one roster peer, record or rule and never the whole map.  Sizes
are bounded (:data:`MAX_REMOTE_PEERS`, :data:`MAX_ZONES`, :data:`MAX_RECORDS`,
:data:`MAX_RULES`); entries past a bound are skipped and counted too.

What comes out (:class:`AccountNetwork`):

* own addresses: the tunnel IPv4 interface (``peerConfig.address``, e.g.
  ``100.64.0.99/10``) and, when present, the IPv6 one (``address_v6``:
  address bytes + prefix length, upstream ``netiputil`` encoding);
* the WireGuard roster: one :class:`RosterPeer` per remote peer (raw key,
  its base64 text on demand, normalised allowed-IP prefixes, endpoint when the proto carries
  one).  ``offlinePeers`` are not part of the roster (upstream does not
  configure them either).  An empty ``remotePeers`` list is an empty roster
  whatever ``remotePeersIsEmpty`` says (upstream's legacy "no change" reading
  of an empty list without the flag would keep stale peers: fail closed);
* DNS zones: :class:`DnsZone` with A (type 1) and AAAA (type 28) records only,
  names lower-cased with a trailing dot, TTL clamped to ``0..MAX_TTL``;
  records outside their zone apex are skipped;
* inbound firewall rules: :class:`InboundRule` values (direction IN only: the
  netstack filter is an inbound filter; OUT rules are about traffic this
  peer originates, which the gateway only sends to roster peers anyway).
  ``InboundRule.rule_kwargs()`` is exactly the keyword set of
  ``nbgateway.netstack.filter.Rule.make``.  Order: DROP rules first, then
  ACCEPT (upstream's firewall managers install deny rules ahead of accept
  rules), each group in map order.  Sources come from ``sourcePrefixes``
  when present, else from the legacy ``PeerIP`` (``0.0.0.0`` / ``::`` mean
  "any").  Protocols: ALL -> any (ports ignored), TCP 6, UDP 17, ICMP 1 and
  58, NETBIRD_SSH -> TCP 22, CUSTOM -> ``customProtocol``.

Maps repeat: every map is the whole network, so a peer storm sends the same
peers, rules and records again and again.  Each peer's and record's
conversion (result and skip reasons) is memoized by its serialized bytes
(:class:`_Memo`, bounded, oldest out first), so a map costs one
serialization and one lookup per unchanged peer or record.  Rules are not
memoized: a map holds one rule per peer address and port, so they are merged
instead (:func:`_convert_rules`: one :class:`InboundRule` per action,
protocols, ports and policy, its sources the roster's own prefix objects),
with each distinct port text, policy ID and source parsed once per map.

The filter's default action for a map is :data:`DEFAULT_ACTION` ("deny": the
proxy peer accepts only what management allows, fail closed).  The runtime
adds its own rules for what it serves to every roster peer, e.g.
:func:`dns_rule` (UDP/TCP 53 from the roster's allowed IPs) and
:func:`echo_rule` (ping, ICMP and ICMPv6 echo, from the same sources).
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import os
import socket
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import blake2b as _blake2b
from typing import Any

from nbgateway.netstack.prefix import V6_FLAG, Prefix

__all__ = [
    "DEFAULT_ACTION",
    "MAX_RECORDS",
    "MAX_REMOTE_PEERS",
    "MAX_RULES",
    "MAX_TTL",
    "MAX_ZONES",
    "AccountNetwork",
    "DnsRecord",
    "DnsZone",
    "InboundRule",
    "RosterPeer",
    "convert",
    "dns_rule",
    "echo_rule",
    "normalize_name",
]

MAX_REMOTE_PEERS = 16384
MAX_ALLOWED_IPS_PER_PEER = 256
MAX_ZONES = 1024
MAX_RECORDS = 16384
MAX_RULES = 16384
MAX_SOURCES_PER_RULE = 1024
#: RFC 2181 8: a TTL is an unsigned 31-bit value
MAX_TTL = 2**31 - 1
MAX_NAME_LEN = 253

TYPE_A = 1
TYPE_AAAA = 28

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

DEFAULT_ACTION = "deny"

# management.proto enums (RuleProtocol, RuleDirection, RuleAction)
_P_UNKNOWN, _P_ALL, _P_TCP, _P_UDP, _P_ICMP, _P_CUSTOM, _P_SSH = range(7)
_DIR_IN = 0
_ACT_ACCEPT, _ACT_DROP = 0, 1

_ANY_V4 = Prefix.of(4, 0, 0)
_ANY_V6 = Prefix.of(6, 0, 0)

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class RosterPeer:
    """One WireGuard peer of the account's roster: an immutable value.

    Only the raw key is kept (``key_bytes``); ``public_key``, the base64
    text, is derived on demand (a roster of thousands of idle peers does not
    hold every key twice).  The constructor keeps the upstream field order
    ``(public_key, key_bytes, allowed_ips, endpoint, fqdn)``; the text
    argument is not stored, ``key_bytes`` is the identity."""

    __slots__ = ("allowed_ips", "endpoint", "fqdn", "key_bytes")

    key_bytes: bytes
    allowed_ips: tuple[Prefix, ...]
    endpoint: str
    fqdn: str

    def __init__(self, public_key: str | None, key_bytes: bytes,
                 allowed_ips: tuple[Prefix, ...], endpoint: str = "", fqdn: str = "") -> None:
        del public_key  # derived from key_bytes on demand
        _set = object.__setattr__
        _set(self, "key_bytes", key_bytes)
        _set(self, "allowed_ips", allowed_ips)
        _set(self, "endpoint", endpoint)
        _set(self, "fqdn", fqdn)

    @property
    def public_key(self) -> str:
        """The key as base64 text (what the proto and ``wg`` print)."""
        return base64.b64encode(self.key_bytes).decode("ascii")

    def _fields(self) -> tuple[bytes, tuple[Prefix, ...], str, str]:
        return (self.key_bytes, self.allowed_ips, self.endpoint, self.fqdn)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"RosterPeer is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"RosterPeer is immutable (cannot delete {name!r})")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not RosterPeer:
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"RosterPeer(public_key={self.public_key!r}, allowed_ips={self.allowed_ips!r}, "
                f"endpoint={self.endpoint!r}, fqdn={self.fqdn!r})")


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """An A or AAAA record; ``name`` is lower-case with a trailing dot."""

    name: str
    type: int
    ttl: int
    address: str


@dataclass(frozen=True)
class DnsZone:
    """A zone: apex ``domain`` (lower-case, trailing dot) and its records.

    ``authoritative`` is False for upstream's match-only (``NonAuthoritative``)
    zones, whose unknown names fall through to other resolvers upstream."""

    domain: str
    records: tuple[DnsRecord, ...] = ()
    authoritative: bool = True
    search_domain_disabled: bool = False


@dataclass(frozen=True, slots=True)
class InboundRule:
    """One inbound packet-filter rule, ready for ``Rule.make(**rule_kwargs())``."""

    action: str
    sources: tuple[Prefix, ...] = ()
    protocols: frozenset[int] = frozenset()
    ports: tuple[tuple[int, int], ...] = ()
    policy_id: str = ""

    def rule_kwargs(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "sources": self.sources,
            "protocols": self.protocols,
            "ports": self.ports,
        }


@dataclass(frozen=True)
class AccountNetwork:
    """Everything the per-account runtime applies from one network map."""

    serial: int
    address: Interface | None
    address_v6: Interface | None = None
    fqdn: str = ""
    roster: tuple[RosterPeer, ...] = ()
    zones: tuple[DnsZone, ...] = ()
    inbound_rules: tuple[InboundRule, ...] = ()
    #: reason -> count of entries that were dropped while converting
    skipped: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def addresses(self) -> tuple[str, ...]:
        """The tunnel IPs as text (what the netstack is given)."""
        return tuple(str(a.ip) for a in (self.address, self.address_v6) if a is not None)

    def peer(self, public_key: str) -> RosterPeer | None:
        raw = _decode_key(public_key)
        if raw is None:
            return None
        for p in self.roster:
            if p.key_bytes == raw:
                return p
        return None


def normalize_name(name: str) -> str | None:
    """Lower-case DNS name with one trailing dot, or None if unusable."""
    if not isinstance(name, str):
        return None
    text = name.strip().lower()
    if text in ("", "."):
        return None
    text = text.rstrip(".") + "."
    if len(text) > MAX_NAME_LEN + 1 or ".." in text:
        return None
    try:
        text.encode("ascii")
    except UnicodeEncodeError:
        return None
    if any(len(label) > 63 for label in text[:-1].split(".")):
        return None
    return text


def _in_zone(name: str, apex: str) -> bool:
    return name == apex or name.endswith("." + apex)


def _decode_key(text: str) -> bytes | None:
    if not isinstance(text, str) or len(text) != 44:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def _interface_v6(raw: bytes) -> Interface | None:
    if len(raw) != 17:
        return None
    try:
        return ipaddress.IPv6Interface((raw[:16], raw[16]))
    except ValueError:
        return None


# No caches here: these run only for entries the memo has not seen (a new or
# changed peer or rule), and a prefix is one small int (Prefix).

def _decode_prefix(raw: bytes) -> Prefix | None:
    """``netiputil.EncodePrefix``: address bytes + prefix length byte."""
    if len(raw) not in (5, 17):
        return None
    try:
        return Prefix.from_packed(raw[:-1], raw[-1])
    except ValueError:
        return None


def _peer_ip_source(text: str) -> Prefix | None:
    # fast path: IPv4 dotted quads read the same through inet_pton (glibc:
    # four decimal parts, no leading zeros, nothing else) as through
    # ipaddress; IPv6 text in its canonical form (what management writes)
    # too.  Anything else (a scope, upper case, garbage) goes through
    # ipaddress.
    try:
        if ":" not in text:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
            return Prefix(value << 8 | 32) if value else _ANY_V4
        packed = socket.inet_pton(socket.AF_INET6, text)
        if socket.inet_ntop(socket.AF_INET6, packed) == text:
            value = int.from_bytes(packed, "big")
            return Prefix(V6_FLAG | value << 8 | 128) if value else _ANY_V6
    except (OSError, ValueError):
        if ":" not in text:
            return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if addr.is_unspecified:
        return _ANY_V4 if addr.version == 4 else _ANY_V6
    return Prefix.of(addr.version, int(addr), addr.max_prefixlen)


def _allowed_ip(text: str) -> Prefix | None:
    try:
        return Prefix.parse(text)
    except ValueError:
        return None


def _ports(rule: Any) -> tuple[tuple[int, int], ...] | None:
    """Port selection of a rule; () for any; None when unusable."""
    if rule.Port:
        text = rule.Port.strip()
        if "-" in text:  # tolerate "a-b" the way some upstream versions wrote ranges
            lo_s, _, hi_s = text.partition("-")
        else:
            lo_s = hi_s = text
        if not (lo_s.isdigit() and hi_s.isdigit()):
            return None
        lo, hi = int(lo_s), int(hi_s)
    elif rule.HasField("PortInfo"):
        which = rule.PortInfo.WhichOneof("portSelection")
        if which == "port":
            lo = hi = rule.PortInfo.port
        elif which == "range":
            lo, hi = rule.PortInfo.range.start, rule.PortInfo.range.end
        else:
            return ()
    else:
        return ()
    if not 0 < lo <= hi <= 0xFFFF:
        return None
    return _shared_ports(lo, hi)


@functools.lru_cache(maxsize=4096)  # every rule of a port shares one tuple
def _shared_ports(lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    return ((lo, hi),)


_NO_PROTOCOL: frozenset[int] = frozenset()
_TCP = frozenset({PROTO_TCP})
_UDP = frozenset({PROTO_UDP})
_ICMP = frozenset({PROTO_ICMP, PROTO_ICMPV6})


@functools.lru_cache(maxsize=256)
def _custom_protocol(number: int) -> frozenset[int]:
    return frozenset({number})


def _protocols(rule: Any) -> tuple[frozenset[int], bool] | None:
    """(protocol numbers, ports apply) or None for an unusable protocol."""
    # shared values: a map holds one rule per peer address and port
    p = rule.Protocol
    if p == _P_ALL:
        return _NO_PROTOCOL, False
    if p == _P_TCP:
        return _TCP, True
    if p == _P_UDP:
        return _UDP, True
    if p == _P_ICMP:
        return _ICMP, False
    if p == _P_SSH:
        return _TCP, True
    if p == _P_CUSTOM and 0 < rule.customProtocol < 256:
        return _custom_protocol(rule.customProtocol), False
    return None


_MISS = object()


class _Skipped:
    """A memoized conversion that skipped (parts of) its entry, and why."""

    __slots__ = ("reasons", "value")

    def __init__(self, value: Any, reasons: tuple[str, ...]) -> None:
        self.value = value
        self.reasons = reasons


class _Memo:
    """Bounded memo of entry conversions keyed by a digest of the entry's
    serialized bytes (:func:`_memo_key`; the converted value, with its skip
    reasons when there were any).  Oldest entries go first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: key -> converted value, or _Skipped when the conversion skipped parts
        self.entries: dict[Any, Any] = {}

    def convert(self, key: Any, make: Callable[..., Any], skipped: Counter[str],
                *args: Any) -> Any:
        """The memoized ``make(*args, reasons)`` for ``key`` (no closure per
        entry: ``args`` are passed through)."""
        hit = self.entries.get(key, _MISS)
        if hit is _MISS:
            reasons: Counter[str] = Counter()
            value = make(*args, reasons)
            hit = _Skipped(value, tuple(reasons.elements())) if reasons else value
            if len(self.entries) >= self.limit:
                del self.entries[next(iter(self.entries))]
            self.entries[key] = hit
        if type(hit) is _Skipped:
            for reason in hit.reasons:
                skipped[reason] += 1
            return hit.value
        return hit

    def clear(self) -> None:
        self.entries.clear()


_PEERS = _Memo(MAX_REMOTE_PEERS)
_RECORDS = _Memo(MAX_RECORDS)

#: a per-process secret: the memo keys are keyed BLAKE2b digests, so nobody
#: who does not know it can make two entries collide
_MEMO_SECRET = os.urandom(32)


def _memo_key(data: bytes) -> int:
    """The memo key of an entry's serialized bytes: its keyed 128-bit BLAKE2b
    digest as an int (a 48-byte block kept per entry, where the digest's
    bytes object takes 64 and the whole serialization ~150 for a peer; an
    accidental collision among the memo's at most 16,384 entries has
    probability ~2**-100, a chosen one needs the secret)."""
    return int.from_bytes(_blake2b(data, digest_size=16, key=_MEMO_SECRET).digest(), "little")

#: values of the entries converted (memo misses) by the running ``convert``,
#: so that new entries naming the same thing share one object: a new peer's
#: prefixes (with its new rules), a one-source tuple (the rules of one address,
#: one per port), a new peer's name (with its new DNS record).  Emptied when
#: ``convert`` returns.
_FRESH: dict[Prefix, Prefix] = {}
_FRESH_NAMES: dict[str, str] = {}
#: TTL values shared by every record (bounded: the first 256 distinct)
_TTLS: dict[int, int] = {}


def _fresh_name(name: str | None) -> str | None:
    return name if not name else _FRESH_NAMES.setdefault(name, name)


class _RuleParts:
    """Per-``convert`` tables of the rule fields a map repeats (port texts,
    policy IDs, ``PeerIP`` texts): each distinct value is parsed once per
    map, and a source that is a roster address is the roster's own
    :class:`Prefix` object (``sourcePrefixes`` entries are looked up in the
    roster's prefixes as they are: :meth:`raw_source`).  Nothing outlives
    the map."""

    __slots__ = ("known", "peer_ips", "policies", "ports")

    def __init__(self, roster: tuple[RosterPeer, ...]) -> None:
        self.known: dict[Prefix, Prefix] = {net: net for p in roster for net in p.allowed_ips}
        self.ports: dict[str, tuple[tuple[int, int], ...] | None] = {}
        self.policies: dict[bytes, str] = {}
        self.peer_ips: dict[str, Prefix | None] = {}

    def peer_ip(self, text: str) -> Prefix | None:
        """``PeerIP`` text's source (remembered for the map); the caller has
        looked in :attr:`peer_ips` first."""
        net: Prefix | None
        if ":" not in text:
            # an IPv4 host's key, as a plain int: the roster's prefix when it
            # is a roster address (no Prefix made), see _peer_ip_source
            try:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
            except (OSError, ValueError):
                net = None
            else:
                key = value << 8 | 32
                net = (self.known.get(key) or Prefix(key)) if value else _ANY_V4
        else:
            net = _peer_ip_source(text)
            if net is not None:
                net = self.known.get(net, net)
        self.peer_ips[text] = net
        return net

    def raw_source(self, raw: bytes) -> Prefix | None:
        """A ``sourcePrefixes`` entry's source: the roster's own prefix object
        when it is a roster address (the encoding read as one int is the
        :class:`Prefix` value when the host bits are clear, so no bytes key
        is kept per map and nothing is made), else decoded."""
        n = len(raw)
        if n == 5:
            net = self.known.get(int.from_bytes(raw, "big"))
        elif n == 17:
            net = self.known.get(V6_FLAG | int.from_bytes(raw, "big"))
        else:
            return None
        if net is None:
            net = _decode_prefix(raw)
            if net is not None:
                net = self.known.get(net, net)
        return net

    def policy(self, raw: bytes) -> str:
        got = self.policies.get(raw)
        if got is None:
            got = self.policies[raw] = sys.intern(raw.decode("utf-8", "replace"))
        return got


_RuleKey = tuple[str, frozenset[int], tuple[tuple[int, int], ...], str]


def _rule_key(rule: Any, parts: _RuleParts, skipped: Counter[str]) -> _RuleKey | None:
    """(action, protocols, ports, policy ID) of a rule; None when skipped."""
    protos = _protocols(rule)
    if protos is None:
        skipped["rule_protocol"] += 1
        return None
    protocols, ports_apply = protos
    ports: tuple[tuple[int, int], ...] | None = ()
    if rule.Protocol == _P_SSH:
        ports = _shared_ports(22, 22)
    elif ports_apply:
        text = rule.Port
        if text:
            ports = parts.ports.get(text, _MISS)  # type: ignore[arg-type]
            if ports is _MISS:
                ports = parts.ports[text] = _ports(rule)
        else:
            ports = _ports(rule)
        if ports is None:
            skipped["rule_port"] += 1
            return None
    action = "deny" if rule.Action == _ACT_DROP else "allow"
    return action, protocols, ports, parts.policy(rule.PolicyID)


def _rule_sources(rule: Any, parts: _RuleParts, skipped: Counter[str]) -> list[Prefix]:
    sources: list[Prefix] = []
    if len(rule.sourcePrefixes):
        for raw in rule.sourcePrefixes[:MAX_SOURCES_PER_RULE]:
            net = parts.raw_source(raw)
            if net is None:
                skipped["rule_source"] += 1
            else:
                sources.append(net)
    elif rule.PeerIP:
        net = parts.peer_ip(rule.PeerIP)
        if net is not None:
            sources.append(net)
        else:
            skipped["rule_source"] += 1
    return sources


def _convert_rules(nm: Any, roster: tuple[RosterPeer, ...],
                   skipped: Counter[str]) -> tuple[InboundRule, ...]:
    """The map's inbound rules, merged: one :class:`InboundRule` per (action,
    protocols, ports, policy ID) with the union of its rules' sources, in
    order of first appearance, DROP before ACCEPT.  The same decisions as one
    rule per entry: every DROP rule comes before every ACCEPT rule, so a
    packet is denied when any DROP rule matches, else allowed when any ACCEPT
    rule matches, whatever the order within each group.  No memo: a map of
    N rules keeps a few rules and N source references (8 bytes each), and
    each distinct field value is parsed once per map (:class:`_RuleParts`)."""
    parts = _RuleParts(roster)
    groups: dict[_RuleKey, dict[Prefix, None]] = {}
    # (protocol, action, port text, policy bytes, custom protocol) -> the
    # group's source set, or the skip reason: a map repeats a few shapes
    shapes: dict[tuple[Any, ...], dict[Prefix, None] | str] = {}
    peer_ips = parts.peer_ips
    all_rules = nm.FirewallRules
    if len(all_rules) > MAX_RULES:
        skipped["rule_limit"] += len(all_rules) - MAX_RULES
        all_rules = all_rules[:MAX_RULES]
    for rule in all_rules:
        if rule.Direction != _DIR_IN:
            continue
        proto = rule.Protocol
        port = rule.Port
        if not port and proto in (_P_TCP, _P_UDP) and rule.HasField("PortInfo"):
            shape: tuple[Any, ...] | None = None  # ports in a sub-message: no shape
            group: dict[Prefix, None] | str | None = None
        else:
            shape = (proto, rule.Action, port, rule.PolicyID,
                     rule.customProtocol if proto == _P_CUSTOM else 0)
            group = shapes.get(shape)
        if group is None:
            reasons: Counter[str] = Counter()
            key = _rule_key(rule, parts, reasons)
            if key is None:
                group = next(iter(reasons))
            else:
                group = groups.get(key)
                if group is None:
                    group = groups[key] = {}
            if shape is not None:
                shapes[shape] = group
        if type(group) is str:
            skipped[group] += 1
            continue
        if len(rule.sourcePrefixes):
            sources = _rule_sources(rule, parts, skipped)
            if not sources:
                # an empty source list would match everyone: never widen on bad input
                skipped["rule_no_source"] += 1
                continue
            for net in sources:
                group[net] = None  # type: ignore[index]
            continue
        text = rule.PeerIP
        net = peer_ips.get(text, _MISS)  # type: ignore[arg-type]
        if net is _MISS:
            net = parts.peer_ip(text) if text else None
        if net is None:
            if text:
                skipped["rule_source"] += 1
            skipped["rule_no_source"] += 1
            continue
        group[net] = None  # type: ignore[index]
    shared: dict[tuple[Prefix, ...], tuple[Prefix, ...]] = {}
    out: list[InboundRule] = []
    for wanted in ("deny", "allow"):
        for (action, protocols, ports, policy), nets in groups.items():
            # a group whose every rule was skipped for its sources has none:
            # left out (an empty source list would match everyone)
            if action == wanted and nets:
                srcs = tuple(nets)
                # rules naming the same peers (one per port) share one tuple
                out.append(InboundRule(action, shared.setdefault(srcs, srcs), protocols,
                                       ports, policy))
    return tuple(out)


def _convert_peer(rp: Any, skipped: Counter[str]) -> RosterPeer | None:
    raw = _decode_key(rp.wgPubKey)
    if raw is None:
        skipped["peer_key"] += 1
        return None
    nets: list[Prefix] = []
    for text in rp.allowedIps[:MAX_ALLOWED_IPS_PER_PEER]:
        net = _allowed_ip(text)
        if net is None:
            skipped["peer_allowed_ip"] += 1
        else:
            nets.append(_FRESH.setdefault(net, net))
    endpoint = getattr(rp, "endpoint", "") or ""
    return RosterPeer(
        None,
        key_bytes=raw,
        allowed_ips=tuple(dict.fromkeys(nets)),
        endpoint=endpoint,
        fqdn=_fresh_name(normalize_name(rp.fqdn) or ""),
    )


def _convert_roster(nm: Any, skipped: Counter[str]) -> tuple[RosterPeer, ...]:
    roster: dict[bytes, RosterPeer] = {}
    for i, rp in enumerate(nm.remotePeers):
        if i >= MAX_REMOTE_PEERS:
            skipped["peer_limit"] += len(nm.remotePeers) - i
            break
        peer = _PEERS.convert(_memo_key(rp.SerializeToString()),
                              _convert_peer, skipped, rp)
        if peer is not None:
            roster[peer.key_bytes] = peer
    return tuple(roster.values())


def _convert_zones(nm: Any, skipped: Counter[str]) -> tuple[DnsZone, ...]:
    zones: dict[str, DnsZone] = {}
    budget = MAX_RECORDS
    for i, z in enumerate(nm.DNSConfig.CustomZones):
        if i >= MAX_ZONES:
            skipped["zone_limit"] += len(nm.DNSConfig.CustomZones) - i
            break
        apex = normalize_name(z.Domain)
        if apex is None:
            skipped["zone_name"] += 1
            continue
        records: list[DnsRecord] = []
        # memo key: the apex (length-prefixed, <= 254 bytes) then the record
        apex_key = bytes((len(apex),)) + apex.encode("ascii")
        for r in z.Records:
            if budget <= 0:
                skipped["record_limit"] += 1
                continue
            rec = _RECORDS.convert(_memo_key(apex_key + r.SerializeToString()),
                                   _convert_record, skipped, r, apex)
            if rec is not None:
                records.append(rec)
                budget -= 1
        prev = zones.get(apex)
        if prev is not None:  # same apex twice: merge (authoritative if either is)
            zones[apex] = DnsZone(
                apex,
                tuple(dict.fromkeys(prev.records + tuple(records))),
                prev.authoritative or not z.NonAuthoritative,
                prev.search_domain_disabled and z.SearchDomainDisabled,
            )
        else:
            zones[apex] = DnsZone(
                apex, tuple(dict.fromkeys(records)), not z.NonAuthoritative,
                z.SearchDomainDisabled,
            )
    return tuple(zones.values())


def _convert_record(r: Any, apex: str, skipped: Counter[str]) -> DnsRecord | None:
    if r.Class not in ("IN", ""):
        skipped["record_class"] += 1
        return None
    name = _fresh_name(normalize_name(r.Name))
    if name is None or not _in_zone(name, apex):
        skipped["record_name"] += 1
        return None
    try:
        addr = ipaddress.ip_address(r.RData.strip())
    except ValueError:
        skipped["record_rdata"] += 1
        return None
    if r.Type == TYPE_A and addr.version == 4:
        rtype = TYPE_A
    elif r.Type == TYPE_AAAA and addr.version == 6:
        rtype = TYPE_AAAA
    else:
        skipped["record_type"] += 1
        return None
    ttl = min(max(int(r.TTL), 0), MAX_TTL)
    # records share their TTL int (an int past 256 is an object per record)
    ttl = _TTLS.setdefault(ttl, ttl) if len(_TTLS) < 256 or ttl in _TTLS else ttl
    return DnsRecord(name=name, type=rtype, ttl=ttl, address=str(addr))


def convert(nm: Any) -> AccountNetwork:
    """Convert a ``management_pb2.NetworkMap`` (see module docstring)."""
    skipped: Counter[str] = Counter()
    pc = nm.peerConfig
    address: Interface | None = None
    if pc.address:
        try:
            address = ipaddress.ip_interface(pc.address)
        except ValueError:
            skipped["own_address"] += 1
    address_v6 = None
    if pc.address_v6:
        address_v6 = _interface_v6(bytes(pc.address_v6))
        if address_v6 is None:
            skipped["own_address_v6"] += 1
    try:
        roster = _convert_roster(nm, skipped)  # first: new rules share new peers' prefixes
        rules = _convert_rules(nm, roster, skipped)
        zones = _convert_zones(nm, skipped)
    finally:
        _FRESH.clear()
        _FRESH_NAMES.clear()
    return AccountNetwork(
        serial=int(nm.Serial),
        address=address,
        address_v6=address_v6,
        fqdn=normalize_name(pc.fqdn) or "",
        roster=roster,
        zones=zones,
        inbound_rules=rules,
        skipped=dict(skipped),
    )


def _roster_rule(roster: Iterable[RosterPeer], **rule: Any) -> InboundRule | None:
    """An allow rule whose sources are every roster peer's allowed IPs (each
    once, in roster order); None for an empty roster."""
    sources = tuple(dict.fromkeys(net for p in roster for net in p.allowed_ips))
    if not sources:
        return None
    return InboundRule(action="allow", sources=sources, **rule)


def echo_rule(roster: Iterable[RosterPeer]) -> InboundRule | None:
    """Allow ICMP and ICMPv6 echo requests from every roster peer's allowed IPs
    (ping to the gateway's tunnel addresses, IPv4 and IPv6; the filter only
    consults rules for echo requests); None for an empty roster."""
    return _roster_rule(roster, protocols=frozenset({PROTO_ICMP, PROTO_ICMPV6}),
                        policy_id="nbgateway-echo")


def dns_rule(roster: Iterable[RosterPeer], port: int = 53) -> InboundRule | None:
    """Allow UDP and TCP ``port`` from every roster peer's allowed IPs (the
    DNS responder on the tunnel address); None for an empty roster."""
    return _roster_rule(roster, protocols=frozenset({PROTO_UDP, PROTO_TCP}),
                        ports=((port, port),), policy_id="nbgateway-dns")
