"""Which gateways a peer's wg-quick config lists, and why the others are left out.

A gateway (an embedded proxy peer) accepts handshakes only from the peers in
its network map: members of an access group of one of its private services,
and the backends it proxies to.  A config that listed the gateway for any
other peer would leave that peer waiting for a handshake that never
completes.  So :func:`render_peer_config` lists exactly the proxy peers found
in the peer's own network map (the same policy evaluation the gateway's map
comes from, seen from the other end); every other proxy peer becomes a
comment in the config naming the access groups that would let the peer in.
The first time a peer is refused this way it is logged at info level
(:class:`RefusalLog`, bounded).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger

from nbgateway.management import privateca, wgconfig
from nbgateway.management.model import Peer
from nbgateway.management.networkmap import build_network_map
from nbgateway.management.synthetic import AccountView, load_account_view

log = Logger()


class RefusalLog:
    """Logs "peer X gets no gateway Y" once per (peer, gateways) situation.

    Remembers at most ``limit`` situations (oldest forgotten first), so memory
    stays bounded however many peers ask."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._seen: OrderedDict[tuple[str, str, tuple[str, ...]], None] = OrderedDict()

    def refused(self, account_id: str, peer: Peer, withheld: Sequence[Peer],
                groups: dict[str, list[str]]) -> bool:
        """Log the refusal unless already logged; True when it was logged now."""
        key = (account_id, peer.id, tuple(sorted(p.id for p in withheld)))
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        for proxy in withheld:
            log.info("wireguard config of peer {peer} ({peer_id}, account {account}) leaves "
                     "out gateway {cluster}: the peer is in none of its services' access "
                     "groups ({groups}); its handshakes would be dropped",
                     peer=peer.name, peer_id=peer.id, account=account_id,
                     cluster=proxy.proxy_cluster, groups=", ".join(
                         groups.get(proxy.proxy_cluster, [])) or "none")
        return True


#: the process-wide refusal log of the REST API
REFUSALS = RefusalLog()


def access_group_names(view: AccountView, cluster: str) -> list[str]:
    """Names of the access groups of the enabled private services on ``cluster``."""
    names: dict[str, None] = {}
    for svc in view.services:
        if svc.enabled and svc.private and svc.proxy_cluster == cluster:
            for gid in svc.access_groups or ():
                if gid in view.groups:
                    names.setdefault(view.groups[gid].name, None)
    return list(names)


def split_proxies(view: AccountView, peer: Peer,
                  proxies: Sequence[Peer]) -> tuple[list[Peer], list[Peer]]:
    """(proxy peers the peer may talk to, proxy peers it may not)."""
    reachable = {rp.id for rp in build_network_map(view, peer.id).remote_peers}
    listed = [p for p in proxies if p.id in reachable]
    return listed, [p for p in proxies if p.id not in reachable]


def render_peer_config(store: Any, account_id: str, peer: Peer,
                       refusals: RefusalLog = REFUSALS, *, with_ca: bool = True) -> str:
    """The peer's wg-quick config (``wgconfig.WgConfigError`` for bad stored values)."""
    proxies = [p for p in store.peers.list_proxy_peers(account_id) if p.id != peer.id]
    listed: list[Peer] = []
    withheld: list[Peer] = []
    groups: dict[str, list[str]] = {}
    if proxies:
        view = load_account_view(store, account_id)
        if peer.id in view.peers:
            listed, withheld = split_proxies(view, peer, proxies)
        else:  # deleted meanwhile: nothing to decide on, list nothing
            withheld = proxies
        groups = {p.proxy_cluster: access_group_names(view, p.proxy_cluster) for p in withheld}
    text = wgconfig.render_config(
        private_key=peer.wg_private_key, addresses=[peer.ip, peer.ipv6],
        proxy_peers=[wgconfig.WgPeer(p.key, p.endpoint, [a for a in (p.ip, p.ipv6) if a])
                     for p in listed],
        withheld=[wgconfig.WithheldPeer(p.proxy_cluster, groups[p.proxy_cluster])
                  for p in withheld])
    if withheld:
        refusals.refused(account_id, peer, withheld, groups)
    if with_ca:  # the private CA to trust, as a comment block (nbgateway.management.privateca)
        text += privateca.config_block(store, account_id)
    return text
