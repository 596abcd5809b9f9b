"""A peer's network map: policy evaluation and the proto encoding (management.proto).

:func:`build_network_map` evaluates the account's policies for one peer the way
upstream's ``GetPeerConnectionResources`` does: for every enabled rule it
resolves the source and destination peers (a ``peer`` resource, else the
members of the rule's groups; the requesting peer itself is never a remote
peer) and, when the peer is a source, it gets the destinations as remote
peers with OUT rules; when it is a destination, the sources with IN rules
(and the mirror image for bidirectional rules). Port ranges expand to one
firewall rule per range.

The only policies nbgateway has are the synthetic ones of
:mod:`nbgateway.management.synthetic` (private-service access and proxy ->
backend), so a peer sees exactly the peers a private service or a proxied
target connects it with. DNS carries the account peers zone (records for the
peer and its remote peers) followed by the synthetic private-service zones.

:func:`to_proto_network_map` / :func:`to_proto_peer_config` encode the result
as upstream's ``ToSyncResponse`` does (legacy ``PeerIP`` plus
``sourcePrefixes`` for peers that announce ``PeerCapabilitySourcePrefixes``).

IPv6 overlay: when the map's peer has an IPv6 tunnel address, the map carries
it (``PeerConfig.address_v6``, address bytes + the account v6 prefix length),
each remote peer's IPv6 ``/128`` next to its IPv4 ``/32`` in AllowedIPs, one
more firewall rule per rule for the remote peer's IPv6 address, and AAAA
records next to the A records in the peers zone.  A peer without an IPv6
address gets exactly the IPv4-only map (nothing it could not route).  The
proto encoding carries the v6 parts only with ``ipv6=True``: the peer channel
sets it for clients that announce ``PeerCapabilityIPv6Overlay`` (as upstream
does), so a legacy client never sees a v6 rule or AllowedIP it cannot apply.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nbgateway._proto import management_pb2 as pb
from nbgateway.management.errors import NotFound
from nbgateway.management.model import Account, Peer
from nbgateway.management.synthetic import (
    AccountView,
    CustomZone,
    Policy,
    PolicyRule,
    PortRange,
    SimpleRecord,
    fqdn,
    inject_proxy_policies,
    load_account_view,
    policy_to_json,
    synthesize_private_service_zones,
    zone_to_json,
)

__all__ = [
    "DIRECTION_IN",
    "DIRECTION_OUT",
    "PEER_RECORD_TTL",
    "FirewallRule",
    "NetworkMap",
    "RemotePeer",
    "build_network_map",
    "inspect_peer_network_map",
    "network_map_to_json",
    "own_network_map",
    "peer_fqdn",
    "to_proto_network_map",
    "to_proto_peer_config",
]

DIRECTION_IN = 0
DIRECTION_OUT = 1
PEER_RECORD_TTL = 300
_REMOTE_HAS_ENDPOINT = "endpoint" in pb.RemotePeerConfig.DESCRIPTOR.fields_by_name


@dataclass(frozen=True)
class RemotePeer:
    id: str
    key: str
    allowed_ips: tuple[str, ...]
    fqdn: str = ""
    #: advertised "host:port" (proxy peers / static server peers); "" when unknown
    endpoint: str = ""


@dataclass(frozen=True)
class FirewallRule:
    policy_id: str
    peer_ip: str
    direction: int
    action: str
    protocol: str
    port: str = ""
    port_range: PortRange | None = None


@dataclass(frozen=True)
class NetworkMap:
    peer: Peer
    #: tunnel address with the account prefix length, e.g. "100.64.0.10/10"
    address: str
    fqdn: str
    remote_peers: tuple[RemotePeer, ...] = ()
    firewall_rules: tuple[FirewallRule, ...] = ()
    zones: tuple[CustomZone, ...] = ()
    policies: tuple[Policy, ...] = field(default=(), repr=False)
    #: IPv6 tunnel address with the account v6 prefix length ("fd..::5/64"); "" for none
    address_v6: str = ""


def peer_fqdn(peer: Peer, dns_domain: str) -> str:
    label = peer.dns_label or ""
    if not label or not dns_domain:
        return ""
    return f"{label}.{dns_domain}"


#: the address parsers below are pure functions of their text, called per peer
#: and rule of every map built: their results are memoised (bounded)
_TEXT_MEMO = 16384


@functools.lru_cache(maxsize=1024)
def _prefix_len(network: str, default: int = 32) -> int:
    try:
        return ipaddress.ip_network(network, strict=False).prefixlen
    except ValueError:
        return default


@functools.lru_cache(maxsize=_TEXT_MEMO)
def _ipv6_text(text: str) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return ""
    return str(addr) if addr.version == 6 else ""


def _ipv6_of(peer: Peer) -> str:
    """The peer's IPv6 tunnel address, "" when it has none (or an unusable one)."""
    return _ipv6_text(peer.ipv6 or "")


def _host_prefix(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def _tunnel_ips(peer: Peer, ipv6: bool) -> tuple[str, ...]:
    """The peer's tunnel addresses a map's owner can use: IPv4, plus IPv6 when
    ``ipv6`` (the owner has an IPv6 address itself) and the peer has one."""
    v6 = _ipv6_of(peer) if ipv6 else ""
    return (peer.ip, v6) if v6 else (peer.ip,)


def _rule_peers(view: AccountView, rule: PolicyRule, source: bool) -> list[str]:
    res = rule.source_resource if source else rule.destination_resource
    groups = rule.sources if source else rule.destinations
    if res is not None and res.id:
        if res.type == "peer":
            return [res.id] if res.id in view.peers else []
        return []  # network resources / clusters resolve to no peer
    return view.group_peer_ids(groups)


class _Collector:
    """Accumulates remote peers and de-duplicated firewall rules for one target peer."""

    def __init__(self, view: AccountView, target: Peer) -> None:
        self.view = view
        self.target = target
        self.ipv6 = bool(_ipv6_of(target))
        self.peer_ids: dict[str, None] = {}
        self.rules: list[FirewallRule] = []
        self._seen: set[tuple] = set()

    def add(self, rule: PolicyRule, peer_ids: Sequence[str], direction: int) -> None:
        for pid in peer_ids:
            if pid == self.target.id:
                continue
            peer = self.view.peers.get(pid)
            if peer is None or not peer.ip:
                continue
            self.peer_ids.setdefault(pid, None)
            if rule.ports:
                expanded = [(p, None) for p in rule.ports]
            elif rule.port_ranges:
                expanded = [("", pr) for pr in rule.port_ranges]
            else:
                expanded = [("", None)]
            for ip in _tunnel_ips(peer, self.ipv6):
                base = (rule.id, ip, direction, rule.protocol, rule.action)
                for port, pr in expanded:
                    key = (*base, port, pr)
                    if key in self._seen:
                        continue
                    self._seen.add(key)
                    self.rules.append(
                        FirewallRule(
                            policy_id=rule.policy_id or rule.id,
                            peer_ip=ip,
                            direction=direction,
                            action=rule.action,
                            protocol=rule.protocol,
                            port=port,
                            port_range=pr,
                        )
                    )


def own_network_map(peer: Peer, account: Account) -> NetworkMap:
    """The peer's own part of its map (address, IPv6 address, FQDN) and nothing
    else: all that a Login answer (:func:`to_proto_peer_config`) carries, without
    reading the rest of the account or evaluating its policies."""
    own_v6 = _ipv6_of(peer)
    return NetworkMap(
        peer=peer,
        address=f"{peer.ip}/{_prefix_len(account.network_v4)}",
        address_v6=f"{own_v6}/{_prefix_len(account.network_v6, 64)}" if own_v6 else "",
        fqdn=peer_fqdn(peer, account.domain),
    )


def build_network_map(
    view: AccountView,
    peer_id: str,
    *,
    extra_policies: Iterable[Policy] = (),
) -> NetworkMap:
    """The network map of ``peer_id`` (KeyError if the peer is not in the view)."""
    peer = view.peers[peer_id]
    policies = tuple(inject_proxy_policies(view)) + tuple(extra_policies)
    col = _Collector(view, peer)
    for policy in policies:
        if not policy.enabled:
            continue
        for rule in policy.rules:
            if not rule.enabled:
                continue
            sources = _rule_peers(view, rule, source=True)
            dests = _rule_peers(view, rule, source=False)
            in_src = peer_id in sources
            in_dst = peer_id in dests
            if rule.bidirectional:
                if in_src:
                    col.add(rule, dests, DIRECTION_IN)
                if in_dst:
                    col.add(rule, sources, DIRECTION_OUT)
            if in_src:
                col.add(rule, dests, DIRECTION_OUT)
            if in_dst:
                col.add(rule, sources, DIRECTION_IN)

    dns_domain = view.account.domain
    remotes = []
    for pid in col.peer_ids:
        rp = view.peers[pid]
        remotes.append(
            RemotePeer(
                id=rp.id,
                key=rp.key,
                allowed_ips=tuple(_host_prefix(ip) for ip in _tunnel_ips(rp, col.ipv6)),
                fqdn=peer_fqdn(rp, dns_domain),
                endpoint=rp.endpoint or "",
            )
        )
    zones: list[CustomZone] = []
    if dns_domain:
        records = [
            SimpleRecord(fqdn(peer_fqdn(p, dns_domain)), 1 if ":" not in ip else 28, "IN",
                         PEER_RECORD_TTL, ip)
            for p in [peer, *(view.peers[pid] for pid in col.peer_ids)]
            if peer_fqdn(p, dns_domain) and p.ip
            for ip in _tunnel_ips(p, col.ipv6)
        ]
        if records:
            zones.append(CustomZone(domain=fqdn(dns_domain), records=tuple(records)))
    zones.extend(synthesize_private_service_zones(view, peer_id))
    own = own_network_map(peer, view.account)
    return NetworkMap(
        peer=peer,
        address=own.address,
        address_v6=own.address_v6,
        fqdn=own.fqdn,
        remote_peers=tuple(remotes),
        firewall_rules=tuple(col.rules),
        zones=tuple(zones),
        policies=policies,
    )


def network_map_to_json(nm: NetworkMap) -> dict:
    """JSON-ready form of a network map (REST inspection)."""
    return {
        "peer_id": nm.peer.id,
        "address": nm.address,
        "address_v6": nm.address_v6 or None,
        "fqdn": nm.fqdn,
        "remote_peers": [
            {
                "id": rp.id,
                "public_key": rp.key,
                "allowed_ips": list(rp.allowed_ips),
                "fqdn": rp.fqdn,
                "endpoint": rp.endpoint or None,
            }
            for rp in nm.remote_peers
        ],
        "firewall_rules": [
            {
                "policy_id": r.policy_id,
                "peer_ip": r.peer_ip,
                "direction": "out" if r.direction == DIRECTION_OUT else "in",
                "action": r.action,
                "protocol": r.protocol,
                "port": r.port or None,
                "port_range": (
                    None
                    if r.port_range is None
                    else {"start": r.port_range.start, "end": r.port_range.end}
                ),
            }
            for r in nm.firewall_rules
        ],
        "dns_zones": [zone_to_json(z) for z in nm.zones],
        "policies": [policy_to_json(p) for p in nm.policies],
    }


def inspect_peer_network_map(store: Any, account_id: str, peer_id: str) -> dict:
    """The peer's current network map as JSON; the store's ``NotFound`` for an
    unknown account or peer."""
    view = load_account_view(store, account_id)
    if peer_id not in view.peers:
        raise NotFound("peer not found")
    return network_map_to_json(build_network_map(view, peer_id))


# --- proto encoding --------------------------------------------------------------------------

_PROTOCOLS = {
    "all": pb.ALL,
    "tcp": pb.TCP,
    "udp": pb.UDP,
    "icmp": pb.ICMP,
    "netbird-ssh": pb.NETBIRD_SSH,
}


@functools.lru_cache(maxsize=_TEXT_MEMO)
def _encode_addr(ip: str) -> bytes:
    """``netiputil.EncodeAddr``: address bytes followed by the full prefix length."""
    addr = ipaddress.ip_address(ip)
    return addr.packed + bytes([addr.max_prefixlen])


def _encode_interface(text: str) -> bytes:
    """``netiputil.EncodePrefix`` of an interface address: address bytes + prefix length."""
    iface = ipaddress.ip_interface(text)
    return iface.ip.packed + bytes([iface.network.prefixlen])


def to_proto_peer_config(nm: NetworkMap, *, ipv6: bool = False) -> pb.PeerConfig:
    out = pb.PeerConfig(
        address=nm.address,
        fqdn=nm.fqdn,
        sshConfig=pb.SSHConfig(sshEnabled=False),
        # upstream forces this on for embedded proxy peers
        RoutingPeerDnsResolutionEnabled=nm.peer.proxy,
    )
    if ipv6 and nm.address_v6:
        out.address_v6 = _encode_interface(nm.address_v6)
    return out


def _proto_rule(r: FirewallRule, source_prefixes: bool) -> pb.FirewallRule:
    out = pb.FirewallRule(
        PolicyID=r.policy_id.encode(),
        PeerIP=r.peer_ip,
        Direction=pb.OUT if r.direction == DIRECTION_OUT else pb.IN,
        Action=pb.DROP if r.action == "drop" else pb.ACCEPT,
        Protocol=_PROTOCOLS.get(r.protocol, pb.UNKNOWN),
        Port=r.port,
    )
    if source_prefixes:
        out.sourcePrefixes.append(_encode_addr(r.peer_ip))
    if not r.port and r.port_range is not None and out.Protocol in (pb.TCP, pb.UDP):
        out.PortInfo.range.start = r.port_range.start
        out.PortInfo.range.end = r.port_range.end
    return out


def to_proto_network_map(
    nm: NetworkMap, serial: int, *, source_prefixes: bool = False, ipv6: bool = False
) -> pb.NetworkMap:
    """The proto map; ``ipv6`` keeps the IPv6 overlay parts (see the module docstring)."""
    def keep(ip: str) -> bool:
        return ipv6 or ":" not in ip

    out = pb.NetworkMap(Serial=serial, peerConfig=to_proto_peer_config(nm, ipv6=ipv6))
    for rp in nm.remote_peers:
        allowed = [a for a in rp.allowed_ips if keep(a)]
        rpc = out.remotePeers.add(wgPubKey=rp.key, allowedIps=allowed, fqdn=rp.fqdn)
        rpc.sshConfig.SetInParent()
        if _REMOTE_HAS_ENDPOINT and rp.endpoint:
            rpc.endpoint = rp.endpoint
    out.remotePeersIsEmpty = not nm.remote_peers
    out.DNSConfig.ServiceEnable = True
    for z in nm.zones:
        pz = out.DNSConfig.CustomZones.add(
            Domain=z.domain,
            SearchDomainDisabled=z.search_domain_disabled,
            NonAuthoritative=z.non_authoritative,
        )
        for r in z.records:
            if not keep(r.rdata):
                continue
            pz.Records.add(Name=r.name, Type=r.type, Class=r.klass, TTL=r.ttl, RData=r.rdata)
    for r in nm.firewall_rules:
        if keep(r.peer_ip):
            out.FirewallRules.append(_proto_rule(r, source_prefixes))
    out.firewallRulesIsEmpty = not out.FirewallRules
    out.routesFirewallRulesIsEmpty = True
    return out
