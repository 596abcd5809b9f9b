"""Synthetic DNS zones and synthetic ACL policies for private services.

Pure functions over an :class:`AccountView` (one consistent read of an
account's peers, groups, services and custom domains). Nothing here is ever
persisted; every network-map build recomputes it, so any roster change is
reflected by the next build.

* :func:`synthesize_private_service_zones` -- upstream
  ``SynthesizePrivateServiceZones`` with upstream main's zone-apex resolution
  (#6348) and ``SearchDomainDisabled`` (#6727).
* :func:`inject_private_service_policies` -- upstream
  ``injectPrivateServicePolicies`` with upstream main's dangling-group filter (#7060).
* :func:`inject_proxy_policies` -- upstream ``InjectProxyPolicies``: per-target
  proxy -> backend policies plus the private-service policies.
  ``cluster`` targets get no per-target policy (upstream's is inert anyway).
* :func:`load_account_view` -- the one store read these functions need.

The REST layer can call :func:`private_service_inspection` to show what a
peer (or the whole account) gets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nbgateway.management.errors import NotFound
from nbgateway.management.model import Account, CustomDomain, Group, Peer, Service, Target

__all__ = [
    "PRIVATE_SERVICE_DNS_TTL",
    "AccountView",
    "CustomZone",
    "Policy",
    "PolicyRule",
    "PortRange",
    "Resource",
    "SimpleRecord",
    "fqdn",
    "inject_private_service_policies",
    "inject_proxy_policies",
    "load_account_view",
    "private_service_inspection",
    "private_service_zone_apex",
    "proxy_peers_by_cluster",
    "synthesize_private_service_zones",
]

PRIVATE_SERVICE_DNS_TTL = 5
DNS_TYPE_A = 1
DNS_CLASS_IN = "IN"
PRIVATE_SERVICE_PORTS = ((80, 80), (443, 443))


# --- value types ------------------------------------------------------------------


@dataclass(frozen=True)
class SimpleRecord:
    name: str
    type: int
    klass: str
    ttl: int
    rdata: str


@dataclass(frozen=True)
class CustomZone:
    domain: str
    records: tuple[SimpleRecord, ...] = ()
    search_domain_disabled: bool = False
    non_authoritative: bool = False


@dataclass(frozen=True)
class PortRange:
    start: int
    end: int


@dataclass(frozen=True)
class Resource:
    id: str
    #: "peer", "cluster", "host", "domain" or "subnet"
    type: str


@dataclass(frozen=True)
class PolicyRule:
    id: str
    policy_id: str
    name: str
    enabled: bool = True
    sources: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    source_resource: Resource | None = None
    destination_resource: Resource | None = None
    bidirectional: bool = False
    #: "tcp", "udp", "icmp" or "all"
    protocol: str = "all"
    #: "accept" or "drop"
    action: str = "accept"
    ports: tuple[str, ...] = ()
    port_ranges: tuple[PortRange, ...] = ()


@dataclass(frozen=True)
class Policy:
    id: str
    name: str
    enabled: bool = True
    rules: tuple[PolicyRule, ...] = ()


@dataclass(frozen=True)
class AccountView:
    """One consistent read of what synthesis needs; build with :func:`load_account_view`."""

    account: Account
    peers: Mapping[str, Peer] = field(default_factory=dict)
    groups: Mapping[str, Group] = field(default_factory=dict)
    services: tuple[Service, ...] = ()
    domains: tuple[CustomDomain, ...] = ()

    @classmethod
    def of(
        cls,
        account: Account,
        peers: Iterable[Peer] = (),
        groups: Iterable[Group] = (),
        services: Iterable[Service] = (),
        domains: Iterable[CustomDomain] = (),
    ) -> AccountView:
        return cls(
            account=account,
            peers={p.id: p for p in peers},
            groups={g.id: g for g in groups},
            services=tuple(services),
            domains=tuple(domains),
        )

    def peer_group_ids(self, peer_id: str) -> set[str]:
        """Groups whose member list contains the peer (plus the peer's own ``groups``)."""
        out = {gid for gid, g in self.groups.items() if peer_id in g.peers}
        peer = self.peers.get(peer_id)
        if peer is not None:
            out.update(g for g in peer.groups if g in self.groups)
        return out

    def group_peer_ids(self, group_ids: Iterable[str]) -> list[str]:
        """Member peer ids of the given groups, in order, without duplicates."""
        seen: dict[str, None] = {}
        wanted = list(group_ids)
        for gid in wanted:
            g = self.groups.get(gid)
            if g is not None:
                for pid in g.peers:
                    seen.setdefault(pid, None)
        # peers whose ``groups`` names the group but the group row lags (defensive)
        wanted_set = set(wanted)
        for pid, p in self.peers.items():
            if wanted_set.intersection(p.groups):
                seen.setdefault(pid, None)
        return [pid for pid in seen if pid in self.peers]


def load_account_view(store: Any, account_id: str) -> AccountView:
    """Read the account's peers, groups, services and domains from a ``Store``."""
    return AccountView.of(
        store.accounts.get(account_id),
        store.peers.list(account_id),
        store.groups.list(account_id),
        store.services.list(account_id),
        store.domains.list(account_id),
    )


# --- helpers ----------------------------------------------------------------------


def fqdn(name: str) -> str:
    """``dns.Fqdn``: append the trailing dot once."""
    return name if name.endswith(".") else name + "."


def _valid_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def _domain_from_suffix(domain: str, suffix: str) -> bool:
    if not suffix:
        return False
    return domain == suffix or domain.endswith("." + suffix)


def proxy_peers_by_cluster(peers: Iterable[Peer]) -> dict[str, list[Peer]]:
    """``GetProxyPeers``: embedded proxy peers grouped by the cluster they serve."""
    out: dict[str, list[Peer]] = {}
    for p in peers:
        if p.proxy:
            out.setdefault(p.proxy_cluster, []).append(p)
    for lst in out.values():
        lst.sort(key=lambda p: p.id)
    return out


def _private_gate(svc: Service) -> bool:
    return bool(svc.private and svc.access_groups)


# --- synthetic DNS --------------------------------------------------------------------


def private_service_zone_apex(svc: Service, domains: Sequence[CustomDomain]) -> str:
    """Zone apex (upstream main): the cluster when the domain lies under it, else the longest
    registered custom domain targeting the service's cluster that covers the
    service domain (``validated`` is not checked); "" means skip the service."""
    if _domain_from_suffix(svc.domain, svc.proxy_cluster):
        return svc.proxy_cluster
    best = ""
    for d in domains:
        if d.target_cluster != svc.proxy_cluster:
            continue
        if _domain_from_suffix(svc.domain, d.domain) and len(d.domain) > len(best):
            best = d.domain
    return best


def synthesize_private_service_zones(view: AccountView, peer_id: str) -> list[CustomZone]:
    """Synthetic DNS zones for ``peer_id``: one match-only zone per apex, holding an A
    record (TTL 5) per **connected** proxy peer of each private service the peer may
    reach. A proxy peer (a gateway) gets them for every private service of its own
    cluster, so its DNS responder can answer with all of the cluster's gateways
    (nbgateway extension; upstream sends proxy peers none). Zones are returned
    sorted by domain; empty zones are dropped."""
    if peer_id not in view.peers or not view.services:
        return []
    by_cluster = proxy_peers_by_cluster(view.peers.values())
    if not by_cluster:
        return []
    me = view.peers[peer_id]
    peer_groups = view.peer_group_ids(peer_id)
    zones: dict[str, list[SimpleRecord]] = {}
    for svc in sorted(view.services, key=lambda s: s.id):
        if not svc.enabled or not _private_gate(svc):
            continue
        # a proxy peer gets the records of the services its cluster serves (it
        # answers DNS for them: with every gateway of the cluster, a stock
        # client fails over to the next address); other peers need access
        serves = me.proxy and me.proxy_cluster == svc.proxy_cluster
        if not serves and not peer_groups.intersection(svc.access_groups or ()):
            continue
        proxies = by_cluster.get(svc.proxy_cluster)
        if not proxies:
            continue
        apex = private_service_zone_apex(svc, view.domains)
        if not apex:
            continue
        records = zones.setdefault(apex, [])
        for p in proxies:
            if not _valid_ipv4(p.ip) or not p.connected:
                continue
            records.append(
                SimpleRecord(
                    name=fqdn(svc.domain),
                    type=DNS_TYPE_A,
                    klass=DNS_CLASS_IN,
                    ttl=PRIVATE_SERVICE_DNS_TTL,
                    rdata=p.ip,
                )
            )
    return [
        CustomZone(
            domain=fqdn(apex),
            records=tuple(records),
            search_domain_disabled=True,
            non_authoritative=True,
        )
        for apex, records in sorted(zones.items())
        if records
    ]


# --- synthetic ACL ----------------------------------------------------------------------


def inject_private_service_policies(
    view: AccountView, svc: Service, proxy_peers: Sequence[Peer]
) -> list[Policy]:
    """One policy per proxy peer: access groups -> that proxy peer on TCP 80 and 443
    (a private TCP/TLS/UDP service: its ``listen_port`` over TCP/UDP).

    Gated on ``private`` and non-empty ``access_groups`` and >= 1 proxy peer;
    group ids that no longer exist are dropped (nothing when none remain).
    Proxy-peer connection state is deliberately ignored.
    """
    if not _private_gate(svc) or not proxy_peers:
        return []
    sources = tuple(g for g in svc.access_groups or () if g in view.groups)
    if not sources:
        return []
    out = []
    mode = svc.mode or "http"
    # HTTP: the gateway's tunnel HTTP/HTTPS ports; L4: the service's listen_port
    ranges = tuple(PortRange(a, b) for a, b in PRIVATE_SERVICE_PORTS) if mode == "http" \
        else (PortRange(svc.listen_port, svc.listen_port),)
    for p in proxy_peers:
        pid = f"private-access-{svc.id}-{p.id}"
        rule = PolicyRule(
            id=pid,
            policy_id=pid,
            name=f"Allow access groups to reach {svc.name}",
            enabled=True,
            sources=sources,
            destination_resource=Resource(id=p.id, type="peer"),
            bidirectional=False,
            protocol="udp" if mode == "udp" else "tcp",
            action="accept",
            port_ranges=ranges,
        )
        out.append(Policy(id=pid, name=f"Private Access to {svc.name}", rules=(rule,)))
    return out


def _target_port(t: Target) -> int | None:
    if t.port:
        return t.port
    if t.protocol in ("https", "tls"):
        return 443
    if t.protocol == "http":
        return 80
    return None


def _target_policies(svc: Service, proxy_peers: Sequence[Peer]) -> list[Policy]:
    """Per-target proxy -> backend policies (upstream ``injectTargetProxyPolicies``)."""
    out = []
    for t in svc.targets:
        if not t.enabled or t.target_type == "cluster":  # upstream's policy is inert
            continue
        port = _target_port(t)
        if port is None:
            continue
        path = t.path or ""
        for p in proxy_peers:
            pid = f"proxy-access-{svc.id}-{p.id}-{path}"
            rule = PolicyRule(
                id=pid,
                policy_id=pid,
                name=f"Allow access to {svc.name}",
                source_resource=Resource(id=p.id, type="peer"),
                destination_resource=Resource(id=t.target_id, type=t.target_type),
                protocol="udp" if svc.mode == "udp" else "tcp",
                action="accept",
                port_ranges=(PortRange(port, port),),
            )
            out.append(Policy(id=pid, name=f"Proxy Access to {svc.name}", rules=(rule,)))
    return out


def inject_proxy_policies(view: AccountView) -> list[Policy]:
    """All synthetic policies of the account, in a stable order."""
    if not view.services:
        return []
    by_cluster = proxy_peers_by_cluster(view.peers.values())
    if not by_cluster:
        return []
    out: list[Policy] = []
    for svc in sorted(view.services, key=lambda s: s.id):
        if not svc.enabled:
            continue
        proxies = by_cluster.get(svc.proxy_cluster, [])
        out.extend(_target_policies(svc, proxies))
        out.extend(inject_private_service_policies(view, svc, proxies))
    return out


# --- inspection (REST) ---------------------------------------------------------------------


def zone_to_json(z: CustomZone) -> dict:
    return {
        "domain": z.domain,
        "non_authoritative": z.non_authoritative,
        "search_domain_disabled": z.search_domain_disabled,
        "records": [
            {"name": r.name, "type": r.type, "class": r.klass, "ttl": r.ttl, "rdata": r.rdata}
            for r in z.records
        ],
    }


def policy_to_json(p: Policy) -> dict:
    def res(r: Resource | None) -> dict | None:
        return None if r is None else {"id": r.id, "type": r.type}

    return {
        "id": p.id,
        "name": p.name,
        "enabled": p.enabled,
        "rules": [
            {
                "id": r.id,
                "name": r.name,
                "enabled": r.enabled,
                "sources": list(r.sources),
                "destinations": list(r.destinations),
                "source_resource": res(r.source_resource),
                "destination_resource": res(r.destination_resource),
                "bidirectional": r.bidirectional,
                "protocol": r.protocol,
                "action": r.action,
                "port_ranges": [{"start": pr.start, "end": pr.end} for pr in r.port_ranges],
            }
            for r in p.rules
        ],
    }


def private_service_inspection(store: Any, account_id: str, peer_id: str | None = None) -> dict:
    """JSON-ready view for REST inspection: the account's synthetic policies and, for
    ``peer_id`` (or every peer when None), the synthetic zones it receives.
    Raises the store's ``NotFound`` for an unknown account or peer."""
    view = load_account_view(store, account_id)
    if peer_id is not None and peer_id not in view.peers:
        raise NotFound("peer not found")
    peer_ids = [peer_id] if peer_id is not None else sorted(view.peers)
    return {
        "policies": [policy_to_json(p) for p in inject_proxy_policies(view)],
        "zones": {
            pid: [zone_to_json(z) for z in synthesize_private_service_zones(view, pid)]
            for pid in peer_ids
        },
    }
