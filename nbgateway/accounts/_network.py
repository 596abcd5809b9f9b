"""Applying an account's network maps: roster, packet filter, netstack.

:class:`NetworkMaps` is a slot-less base of
:class:`~nbgateway.accounts.AccountRuntime`: :meth:`~NetworkMaps.apply_network`
takes each map the peer channel delivers, diffs the roster into the
WireGuard device (a peer endpoint the injected ``endpoint_refusal`` refuses
is not applied: the peer keeps no configured endpoint, roaming still works),
compiles the inbound rules into the netstack's filter and,
on the first map, makes the netstack on the account's tunnel address and
brings the inbound listeners up (-> ``ready``).  Its methods read and write
the runtime's slots (``device``, ``stack``, ``applied_roster``, ...).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt.netmap import (
    DEFAULT_ACTION,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    AccountNetwork,
)
from nbgateway.netstack.filter import ALLOW
from nbgateway.netstack.stack import Stack
from nbgateway.wireguard.config import parse_endpoint

log = Logger(namespace="nbgateway.accounts")

ACTIVE = pb.PROXY_STATUS_ACTIVE


class NetworkMaps:
    """Network-map application of an account runtime (see the module docstring)."""

    __slots__ = ()

    #: what the runtime serves to every roster peer on its tunnel addresses:
    #: DNS (UDP and TCP 53) and ping (ICMP/ICMPv6 echo); as netmap's
    #: dns_rule/echo_rule, one entry per peer so each peer's compiled sources
    #: are reused while the peer is unchanged
    OWN_RULES = (
        (frozenset({PROTO_UDP, PROTO_TCP}), ((53, 53),)),
        (frozenset({PROTO_ICMP, PROTO_ICMPV6}), ()),
    )

    def apply_network(self, network: AccountNetwork) -> Deferred | None:
        """Apply one network map from the peer channel (reactor thread)."""
        if self.state not in ("connecting", "ready") or self.device is None:
            return None
        self.network = network
        self._apply_roster(network)
        first = self.stack is None
        if first:
            if not network.addresses:
                log.warn("account {account}: network map without an address",
                         account=self.account_id)
                return None
            self.stack = Stack(self.device, self.reactor, network.addresses, mtu=self.settings.mtu,
                               verify_checksums=False,  # WireGuard authenticated them
                               max_tcp_connections=self.settings.max_tcp_connections)
            self.device.sink = self.stack
            self.tunnel_ip = str(network.address.ip) if network.address else network.addresses[0]
        elif set(network.addresses) != {str(a) for a in self.stack.addresses}:
            log.warn("account {account}: tunnel address changed; keeping {old}",
                     account=self.account_id, old=self.tunnel_ip)
        self._apply_filter(network)
        if self.on_network is not None:
            self.on_network(self, network)
        self._probing = False  # a map: the key is registered
        self._maybe_spent = None
        if first:
            return self._bring_up()
        return None

    def _apply_roster(self, network: AccountNetwork) -> None:
        """Apply the roster as a diff against the previous map: peers gone are
        removed, new ones added, and only peers whose entry changed are
        updated (a peer storm costs the change, not the roster, per map)."""
        device = self.device
        assert device is not None
        previous = {p.key_bytes: p for p in self.applied_roster}
        wanted = {p.key_bytes: p for p in network.roster if p.key_bytes != device.public_key}
        for key in [k for k in device.peers if k not in wanted]:
            device.remove_peer(key)
        self.applied_roster = tuple(wanted.values())
        for key, p in wanted.items():
            if key in device.peers and previous.get(key) == p:
                continue  # unchanged since the last map
            endpoint = None
            if p.endpoint:
                try:
                    endpoint = parse_endpoint(p.endpoint, resolve=False)
                except ValueError:
                    endpoint = None
                if endpoint is not None and self._endpoint_refused(p, endpoint[0]):
                    endpoint = None  # fail closed: roaming from real packets still works
            if key in device.peers:
                device.update_peer(key, allowed_ips=p.allowed_ips, endpoint=endpoint)
            else:
                device.add_peer(key, allowed_ips=p.allowed_ips, endpoint=endpoint)

    def _endpoint_refused(self, peer: Any, host: str) -> bool:
        """A roster endpoint the gateway must not send to (a tenant sets its
        peers' endpoints: loopback, link-local, an address of this host... would
        reflect handshakes onto the gateway host); counted and logged."""
        judge = self.settings.endpoint_refusal
        reason = None if judge is None else judge(host)
        if reason is None:
            return False
        stats = self.settings.stats
        if stats is not None:
            stats.endpoints_refused[reason] += 1
        log.warn("account {account}: peer {peer} endpoint {endpoint} not applied ({reason})",
                 account=self.account_id, peer=peer.public_key[:12], endpoint=peer.endpoint,
                 reason=reason)
        return True

    def _apply_filter(self, network: AccountNetwork) -> None:
        """Install the map's rules, merged (one rule per action, protocols and
        ports) and compiled incrementally: a peer storm compiles the new
        peers' sources, not the roster's."""
        assert self.stack is not None
        compiler = self.rule_compiler
        compiler.begin()
        for r in network.inbound_rules:
            compiler.add(r.action, r.protocols, r.ports, r, r.sources)
        for protocols, ports in self.OWN_RULES:
            for p in network.roster:
                if p.allowed_ips:
                    compiler.add(ALLOW, protocols, ports, p, p.allowed_ips)
        self.stack.filter.set_rules(compiler.finish(), default=DEFAULT_ACTION)

    def _bring_up(self) -> Deferred:
        if self.serve_inbound is None:
            d: Deferred = succeed([])
        else:
            d = maybeDeferred(self.serve_inbound, self)

        def ready(listeners: list[Any]) -> Deferred:
            self.listeners = listeners
            self.state = "ready"
            return self._report_all(ACTIVE)

        def failed(failure: Any) -> Deferred:
            log.warn("account {account}: inbound listeners failed: {err}",
                     account=self.account_id, err=failure.getErrorMessage())
            return ready([])

        return d.addCallbacks(lambda ports: ready(list(ports or [])), failed)
