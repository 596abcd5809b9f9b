"""The account runtime object: its settings, slots, services and status reports.

:class:`AccountRuntime` holds one account's state in ``__slots__`` (memory
per idle account is a measured target: no instance dict, no per-instance
extras) and owns the service-facing side: which mappings the account has
(serialized), the status each one is reported with (ACTIVE, ERROR with a
reason, TUNNEL_NOT_CREATED) and the teardown.  Registration with the
management comes from :class:`~nbgateway.accounts._registration.Registration`
and network-map application from
:class:`~nbgateway.accounts._network.NetworkMaps`, its slot-less bases.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.accounts._network import NetworkMaps
from nbgateway.accounts._registration import RETRY_INITIAL, RETRY_MAX, Registration
from nbgateway.mgmt.netmap import AccountNetwork
from nbgateway.mgmt.reconnect import Backoff
from nbgateway.netstack.filter import RuleCompiler
from nbgateway.netstack.stack import Stack
from nbgateway.routes.service import L4_MODES
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key

log = Logger(namespace="nbgateway.accounts")

ACTIVE = pb.PROXY_STATUS_ACTIVE
ERROR = pb.PROXY_STATUS_ERROR
TUNNEL_NOT_CREATED = pb.PROXY_STATUS_TUNNEL_NOT_CREATED


def new_key(fresh: bool = False) -> bytes:
    """The default ``key_factory``: a new key every time (nothing persisted).
    A ``key_factory`` is called as ``key_factory()`` for the account's key and
    ``key_factory(fresh=True)`` for a replacement (the old one was refused)."""
    return generate_private_key()


class AccountStats:
    """Tunnel-identity counters shared by every runtime of a gateway
    (a prometheus_client custom collector)."""

    def __init__(self) -> None:
        #: account keys replaced after CreateProxyPeer refused them as another peer's
        self.key_rotations = 0
        #: roster endpoints not applied, by reason (the dial guard's special
        #: blocks, ``gateway_local``)
        self.endpoints_refused: Counter[str] = Counter()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        rot = CounterMetricFamily(
            "nbgateway_account_key_rotations",
            "account tunnel keys replaced because management refused them as another peer's")
        rot.add_metric([], self.key_rotations)
        yield rot
        refused = CounterMetricFamily(
            "nbgateway_peer_endpoints_refused",
            "roster peer endpoints not applied (loopback, link-local, unspecified, multicast, "
            "reserved or an address of this host), by reason", labels=["reason"])
        for reason, n in sorted(self.endpoints_refused.items()):
            refused.add_metric([reason], n)
        yield refused

    def describe(self) -> list[Any]:
        return []


@dataclass(frozen=True)
class AccountSettings:
    cluster: str  # --domain, sent as CreateProxyPeer.cluster
    wg_endpoint: str = ""  # advertised UDP endpoint (extension field)
    private: bool = True  # --private: report inbound_listener
    http_port: int = 80
    https_port: int = 443
    mtu: int = 1280
    max_tcp_connections: int = 16384  # --max-tunnel-connections, per account stack
    #: why a roster peer's endpoint address (an IP string) must not be used
    #: (None: it may); injected by the gateway (nbgateway.dial.guard's
    #: judgement); None here: every endpoint address is applied
    endpoint_refusal: Callable[[str], str | None] | None = field(default=None, compare=False)
    #: shared counters (key rotations, refused endpoints); None: not counted
    stats: AccountStats | None = field(default=None, compare=False)


class AccountRuntime(Registration, NetworkMaps):
    """One account's tunnel identity (see :mod:`nbgateway.accounts`)."""

    # a runtime has more attributes than CPython 3.11 shares dict keys for
    # (30): without slots each instance carried its own ~1.6 KiB dict
    __slots__ = (
        "_backoff", "_backoff_args", "_maybe_spent", "_probe_error", "_probing", "_registering",
        "_retry_call", "_retry_error", "_token", "account_id", "applied_roster", "device",
        "forget_note", "key_factory", "key_rotations", "l4_status", "listeners", "mgmt", "mux",
        "network", "on_network", "peer_channel", "peer_channel_factory", "private_key", "reactor",
        "retries", "rule_compiler", "serve_inbound", "services", "settings", "stack", "state",
        "status_note", "tunnel_dialer", "tunnel_ip",
    )

    def __init__(
        self,
        account_id: str,
        *,
        reactor: Any,
        mux: Any,
        mgmt: Any,
        settings: AccountSettings,
        peer_channel_factory: Callable[[str, bytes, Callable[[AccountNetwork], None]], Any],
        serve_inbound: Callable[[AccountRuntime], Deferred] | None = None,
        on_network: Callable[[AccountRuntime, AccountNetwork], None] | None = None,
        key_factory: Callable[..., bytes] = new_key,
        l4_status: Callable[[pb.ProxyMapping], tuple[int, str | None]] | None = None,
        status_note: Callable[[str], str | None] | None = None,
        forget_note: Callable[[str], None] | None = None,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.account_id = account_id
        #: CreateProxyPeer back-off: doubling, jittered, capped after the jitter;
        #: made at the first transient failure (most runtimes never have one)
        self._backoff: Backoff | None = None
        self._backoff_args = (retry_initial, retry_max, rand)
        #: a refusal the gateway found while serving a service (a denied
        #: direct dial): reported as ERROR instead of ACTIVE until the
        #: service's mapping changes (``forget_note``)
        self.status_note = status_note
        self.forget_note = forget_note
        #: (status, error) of an L4 mapping (nbgateway.l4); None: L4 is not served
        self.l4_status = l4_status
        self.reactor = reactor
        self.mux = mux
        self.mgmt = mgmt
        self.settings = settings
        self.peer_channel_factory = peer_channel_factory
        self.serve_inbound = serve_inbound
        self.on_network = on_network
        self.key_factory = key_factory
        self.state = "new"
        #: the account's mappings by service id, serialized (a parsed
        #: ProxyMapping holds a ~1.4 KiB upb arena; reports parse it back):
        #: the mapping store's own bytes when the registry has them (``raw``)
        self.services: dict[str, bytes] = {}
        self.private_key: bytes | None = None
        self.device: WireGuardDevice | None = None
        self.stack: Stack | None = None
        self.network: AccountNetwork | None = None
        #: the roster entries last applied to the device (diffed by _apply_roster)
        self.applied_roster: tuple[Any, ...] = ()
        #: merges and compiles each map's inbound rules, reusing what the
        #: previous map compiled (_apply_filter)
        self.rule_compiler = RuleCompiler()
        self.listeners: list[Any] = []
        self.tunnel_ip = ""
        self.peer_channel: Any = None
        #: the upstream dialer through this account's netstack (made once, on demand)
        self.tunnel_dialer: Any = None
        #: the CreateProxyPeer attempt in flight (None once it fired)
        self._registering: Deferred | None = None
        #: (service id, one-time token) the next CreateProxyPeer sends: the newest
        self._token: tuple[str, str] | None = None
        #: a token an attempt may have spent although its answer was lost
        self._maybe_spent: str | None = None
        #: transient failures in a row (the back-off exponent)
        self.retries = 0
        #: key rotations in a row after "key taken" refusals (Registration._rotate_key)
        self.key_rotations = 0
        self._retry_call: Any = None
        #: the ERROR text reported while retrying
        self._retry_error = ""
        #: connecting with a key whose registration is unconfirmed (_probe)
        self._probing = False
        self._probe_error = ""

    # ------------------------------------------------------------------ queries

    def in_roster(self, ip: str) -> bool:
        """Is ``ip`` a tunnel address of a peer this account knows?"""
        return self.device is not None and self.device.allowed_ips.lookup(ip) is not None

    @property
    def inbound_listener(self) -> tuple[str, int, int] | None:
        if not self.settings.private or not self.listeners or not self.tunnel_ip:
            return None
        return (self.tunnel_ip, self.settings.https_port, self.settings.http_port)

    # ------------------------------------------------------------------ services

    def add_service(self, mapping: pb.ProxyMapping, raw: bytes | None = None) -> Deferred | None:
        """``raw``: ``mapping`` serialized, if the caller has it (shared, not copied)."""
        # the id interned: one string shared with the store and the service table
        self.services[sys.intern(mapping.id)] = \
            mapping.SerializeToString() if raw is None else raw
        if self.forget_note is not None:
            self.forget_note(mapping.id)
        if self.state == "ready":
            return self._report(mapping.id, ACTIVE)
        if self.state in ("new", "failed"):
            self.offer_token(mapping)
            return self._register()
        if self.state == "retrying":
            self.offer_token(mapping)
            return self._report(mapping.id, ERROR, error=self._retry_error, listener=False)
        if self.state == "registering":
            self.offer_token(mapping)
        return self._registering

    def offer_token(self, mapping: pb.ProxyMapping) -> None:
        """Keep the mapping's one-time token for the next CreateProxyPeer
        attempt (a mapping delivered again brings a fresh one)."""
        if mapping.auth_token or self._token is None:
            self._token = (mapping.id, mapping.auth_token)

    def service_changed(self, mapping: pb.ProxyMapping) -> Deferred | None:
        """A changed mapping clears a refusal noted for the service (its
        target may be allowed now) and, once ready, reports it afresh."""
        if self.status_note is None or self.status_note(mapping.id) is None:
            return None
        if self.forget_note is not None:
            self.forget_note(mapping.id)
        return self._report(mapping.id, ACTIVE) if self.state == "ready" else None

    def report_again(self, service_id: str) -> Deferred | None:
        """Report a served service's status afresh (e.g. its certificate was
        just issued on demand, so management learns its expiry); nothing
        before the runtime is ready or for a service it does not serve."""
        if self.state != "ready" or service_id not in self.services:
            return None
        return self._report(service_id, ACTIVE)

    def remove_service(self, mapping: pb.ProxyMapping) -> Deferred | None:
        if self.services.pop(mapping.id, None) is None:
            return None
        if self.forget_note is not None:
            self.forget_note(mapping.id)
        return self._report(mapping.id, TUNNEL_NOT_CREATED, listener=False)

    # ------------------------------------------------------------------ teardown

    def stop(self) -> Deferred:
        """Tear everything down (listeners first, then the tunnel); a pending
        CreateProxyPeer retry is cancelled."""
        self.state = "stopped"
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        ds = [maybeDeferred(p.stopListening) for p in self.listeners]
        self.listeners = []
        if self.peer_channel is not None:
            ds.append(maybeDeferred(self.peer_channel.stop))
            self.peer_channel = None

        def tunnel_down(_: Any) -> None:
            if self.stack is not None:
                self.stack.close()
            if self.device is not None:
                self.mux.remove(self.device)

        return DeferredList(ds, consumeErrors=True).addCallback(tunnel_down)

    # ------------------------------------------------------------------ status

    def _report_all(self, status: int, *, error: str | None = None, listener: bool = True,
                    sids: list[str] | None = None) -> Deferred:
        """Report every service (or ``sids``), as :meth:`_report` does one."""
        return DeferredList([self._report(sid, status, error=error, listener=listener)
                             for sid in (list(self.services) if sids is None else sids)],
                            consumeErrors=True)

    def _report(self, service_id: str, status: int, *, error: str | None = None,
                listener: bool = True) -> Deferred:
        raw = self.services.get(service_id)
        mapping = None if raw is None else pb.ProxyMapping.FromString(raw)
        if status == ACTIVE and mapping is not None and mapping.mode in L4_MODES:
            if self.l4_status is None:
                # never claim to serve what this gateway does not serve
                status, listener = ERROR, False
                error = f"{mapping.mode.upper()} services are not supported by this gateway"
            else:  # ACTIVE only once its listener is bound
                status, error = self.l4_status(mapping)
                listener = listener and mapping.private and status == ACTIVE
        if status == ACTIVE and self.status_note is not None:
            note = self.status_note(service_id)
            if note is not None:
                status, error, listener = ERROR, note, False
        d = maybeDeferred(
            self.mgmt.send_status_update, service_id, self.account_id, status,
            error_message=error,
            inbound_listener=self.inbound_listener if listener and status == ACTIVE else None,
        )
        d.addErrback(lambda f: log.debug("SendStatusUpdate for {sid} failed: {err}",
                                         sid=service_id, err=f.getErrorMessage()))
        return d
