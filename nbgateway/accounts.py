"""Per-account runtime: one tunnel identity per account.

:class:`AccountRuntime` owns, for one account: a WireGuard device in the
gateway's shared :class:`~nbgateway.wireguard.mux.DeviceMux` (one UDP port for
all accounts), the netstack on the account's tunnel address, the inbound
listeners (HTTP, HTTPS, DNS) and the peer-channel session that keeps the
account's network map (roster, packet filter, DNS zone).

Lifecycle::

    new --add_service--> registering --CreateProxyPeer ok--> connecting
        --first network map--> ready --last service removed--> stopped
    registering --transient failure--> retrying --back-off--> registering
    registering --permanent failure--> failed (the next mapping retries)
    registering --token refused after a lost answer--> connecting (probe: peer
        login) --first network map--> ready / --login refused--> failed

``CreateProxyPeer`` failures that say nothing about the request (UNAVAILABLE,
DEADLINE_EXCEEDED, CANCELLED, RESOURCE_EXHAUSTED, ABORTED, a lost
connection) are retried by the runtime itself after a jittered exponential
back-off (``retry_initial`` doubling to ``retry_max``; one attempt in flight
at most, the timer cancelled by :meth:`AccountRuntime.stop`); meanwhile every
service of the account is reported ERROR "proxy peer registration failed,
retrying in N s: ...".  Each attempt uses the newest one-time token a mapping
brought, and one WireGuard key per runtime.  The token is consumed by the
management before it registers the key, so an attempt whose answer was lost
(a deadline, a dropped connection) may have spent it: when the retry with
that token is refused as an invalid token (the management cannot tell "spent
by us" from "never valid"), the runtime logs in with its key anyway
(``connecting``, services reported ERROR "checking with a peer login"): a
network map proves the lost attempt registered the key (-> ``ready``); a
login refused as unknown (PERMISSION_DENIED) tears the tunnel down and goes
``failed``, waiting for the next mapping's fresh token (tried at once if one
came meanwhile).  As the key is kept, a later registration finds the peer a
lost attempt created instead of adding a second one.  Other failures
(authentication failed, a refused token, ``success=false``) are permanent:
``failed`` until the next mapping, as before.

:class:`AccountRegistry` is the mapping-store observer that creates runtimes on
the first mapping of an account and tears them down with its last one.
Everything I/O-ish is injected (peer channel, inbound listeners, key
generation), so this module is tested with fakes and ``task.Clock``.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
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
from nbgateway.mgmt.reconnect import Backoff
from nbgateway.netstack.filter import ALLOW, RuleCompiler
from nbgateway.netstack.stack import Stack
from nbgateway.routes.service import L4_MODES
from nbgateway.store.mappings import MappingObserver
from nbgateway.wireguard.config import parse_endpoint
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key, key_to_base64, public_key

log = Logger()

ACTIVE = pb.PROXY_STATUS_ACTIVE
ERROR = pb.PROXY_STATUS_ERROR
TUNNEL_NOT_CREATED = pb.PROXY_STATUS_TUNNEL_NOT_CREATED

#: CreateProxyPeer back-off: first delay, cap (seconds) and jitter (a delay is
#: the doubled delay, capped, times a factor drawn from [1 - JITTER, 1 + JITTER],
#: capped again: runtimes at the cap still retry spread over [0.8, 1] x cap)
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0
RETRY_JITTER = 0.2

#: failures that say nothing about the request: retried after a back-off.  The
#: management client raises nbgateway.errors.ManagementError subclasses whose
#: ``code`` is the gRPC status name (read here by name: accounts does not
#: import the errors module, tests/test_layering.py)
_TRANSIENT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED",
                              "RESOURCE_EXHAUSTED", "ABORTED"})
_TRANSIENT_TYPES = (DeferredTimeoutError, neterror.ConnectionLost, neterror.ConnectionDone,
                    neterror.ConnectError)


def _code(failure: Any) -> str:
    code = getattr(failure.value, "code", "")
    return code if isinstance(code, str) else ""


def _transient(failure: Any) -> bool:
    return _code(failure) in _TRANSIENT_CODES or failure.check(*_TRANSIENT_TYPES) is not None


def _may_have_reached(failure: Any) -> bool:
    """Could the management have consumed the token of a transiently failed
    attempt? Everything but a rate-limit refusal (refused before the token
    is looked at) or a client that never sent the call."""
    if _code(failure) == "RESOURCE_EXHAUSTED":
        return False
    return "management client not running" not in failure.getErrorMessage()


def _token_refused(failure: Any) -> bool:
    return _code(failure) == "UNAUTHENTICATED" and "invalid token" in failure.getErrorMessage()


@dataclass(frozen=True)
class AccountSettings:
    cluster: str  # --domain, sent as CreateProxyPeer.cluster
    wg_endpoint: str = ""  # advertised UDP endpoint (extension field)
    private: bool = True  # --private: report inbound_listener
    http_port: int = 80
    https_port: int = 443
    mtu: int = 1280


class AccountRuntime:
    # a runtime has more attributes than CPython 3.11 shares dict keys for
    # (30): without slots each instance carried its own ~1.6 KiB dict
    __slots__ = (
        "_backoff", "_backoff_args", "_maybe_spent", "_probe_error", "_probing", "_registering",
        "_retry_call", "_retry_error", "_token", "account_id", "applied_roster", "device",
        "forget_note", "key_factory", "l4_status", "listeners", "mgmt", "mux", "network",
        "on_network", "peer_channel", "peer_channel_factory", "private_key", "reactor",
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
        key_factory: Callable[[], bytes] = generate_private_key,
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

    # ------------------------------------------------------------------ lifecycle

    def _register(self) -> Deferred:
        """One CreateProxyPeer attempt with the newest token (never two in flight)."""
        assert self._token is not None
        self.state = "registering"
        self._retry_call = None
        if self.private_key is None:  # one key per runtime, kept across attempts
            self.private_key = self.key_factory()
        pub = key_to_base64(public_key(self.private_key))
        service_id, token = self._token
        d = maybeDeferred(
            self.mgmt.create_proxy_peer, service_id, self.account_id, token, pub,
            self.settings.cluster, self.settings.wg_endpoint,
        )
        d.addCallbacks(self._registered, self._register_failed,
                       errbackArgs=(service_id, token))
        # only while in flight: a fired attempt is not kept (nor its result)
        self._registering = None if d.called else d
        return d

    def _registered(self, _result: Any) -> None:
        self._registering = None
        if self.state != "registering":
            return
        self.state = "connecting"
        self.retries = 0
        if not self._probing:
            self._maybe_spent = None
        assert self.private_key is not None
        self.device = WireGuardDevice(self.private_key, self.reactor,
                                      index_registry=self.mux.registry)
        self.mux.add(self.device)
        self.peer_channel = self.peer_channel_factory(
            self.account_id, self.private_key, self.apply_network)
        self.peer_channel.start()

    def _register_failed(self, failure: Any, service_id: str, token: str) -> Deferred | None:
        self._registering = None
        if self.state != "registering":
            return None  # stopped meanwhile: nothing to retry or report
        message = failure.getErrorMessage()
        if _transient(failure):
            if _may_have_reached(failure):
                self._maybe_spent = token
            delay = self._next_delay()
            self.state = "retrying"
            self._retry_error = (f"proxy peer registration failed, retrying in "
                                 f"{max(1, round(delay))} s: {message}")
            log.warn("account {account}: CreateProxyPeer failed ({err}); "
                     "retry {n} in {delay:.1f} s", account=self.account_id, err=message,
                     n=self.retries, delay=delay)
            self._retry_call = self.reactor.callLater(delay, self._retry)
            return DeferredList(
                [self._report(sid, ERROR, error=self._retry_error, listener=False)
                 for sid in list(self.services)], consumeErrors=True)
        if self._token is not None and self._token[1] != token:
            # a mapping brought a fresh token while this attempt was in flight
            log.info("account {account}: CreateProxyPeer failed ({err}); trying the fresh token",
                     account=self.account_id, err=message)
            return self._register()
        if self._maybe_spent == token and _token_refused(failure):
            return self._probe(message)
        self.state = "failed"
        self.retries = 0
        log.warn("account {account}: CreateProxyPeer failed: {err}", account=self.account_id,
                 err=message)
        if "proxy peer authentication failed" not in message:
            message = f"proxy peer authentication failed: {message}"
        self._maybe_spent = None
        # every service: none has a tunnel (and none may keep a "retrying" text)
        sids = list(self.services) or [service_id]
        return DeferredList([self._report(sid, ERROR, error=message, listener=False)
                             for sid in sids], consumeErrors=True)

    def _probe(self, message: str) -> Deferred:
        """The token was refused after an attempt whose answer was lost: that
        attempt may have registered our key (the management consumes the
        token first).  Log in with the key: a first network map proves the
        registration (-> ready); a login refused as unknown
        (:meth:`_peer_channel_error`) means there was none (-> failed, waiting
        for the next mapping's fresh token)."""
        self._probing = True
        self._probe_error = message
        log.warn("account {account}: CreateProxyPeer token refused after a lost answer "
                 "({err}); checking with a peer login", account=self.account_id, err=message)
        self._registered(None)
        if self.peer_channel is not None:  # PeerChannelClient reads it per error
            self.peer_channel.on_error = self._peer_channel_error
        error = ("proxy peer registration: the one-time token was refused after an earlier "
                 "attempt with it got no answer; checking with a peer login whether that "
                 f"attempt registered the peer: {message}")
        return DeferredList([self._report(sid, ERROR, error=error, listener=False)
                             for sid in list(self.services)], consumeErrors=True)

    def _peer_channel_error(self, failure: Any) -> None:
        """While probing: a login refused as unknown (PERMISSION_DENIED, as
        upstream answers a key without a setup key, NOT_FOUND or
        UNAUTHENTICATED) ends the probe; other errors leave the channel to
        its own reconnect back-off."""
        if not self._probing or self.state != "connecting":
            return
        if _code(failure) not in ("PERMISSION_DENIED", "NOT_FOUND", "UNAUTHENTICATED"):
            return
        if self._retry_call is None:  # not from inside the channel's own errback
            self._retry_call = self.reactor.callLater(0, self._probe_failed,
                                                      failure.getErrorMessage())

    def _probe_failed(self, login_error: str) -> Deferred | None:
        self._retry_call = None
        if not self._probing or self.state != "connecting":
            return None
        self._probing = False
        channel, self.peer_channel = self.peer_channel, None
        if channel is not None:
            maybeDeferred(channel.stop).addErrback(
                lambda f: log.debug("peer channel stop failed: {err}", err=f.getErrorMessage()))
        if self.device is not None:
            self.mux.remove(self.device)
            self.device = None
        spent = self._maybe_spent
        self._maybe_spent = None
        if self._token is not None and self._token[1] != spent:
            return self._register()  # a mapping brought a fresh token meanwhile
        self.state = "failed"
        self.retries = 0
        log.warn("account {account}: the lost CreateProxyPeer did not register the peer "
                 "({err}); waiting for a fresh token", account=self.account_id, err=login_error)
        error = ("proxy peer registration: the one-time token was spent by an attempt whose "
                 "answer was lost, and the peer is not registered (login: "
                 f"{login_error}); waiting for a fresh token with the next mapping update: "
                 f"{self._probe_error}")
        return DeferredList([self._report(sid, ERROR, error=error, listener=False)
                             for sid in list(self.services)], consumeErrors=True)

    def _next_delay(self) -> float:
        backoff = self._backoff
        if backoff is None:
            initial, cap, rand = self._backoff_args
            backoff = self._backoff = Backoff(initial=initial, multiplier=2.0, max_interval=cap,
                                              randomization=RETRY_JITTER, random=rand,
                                              max_delay=cap)
        if not self.retries:  # the first failure of a series starts from retry_initial
            backoff.reset()
        self.retries += 1
        return backoff.next_delay()

    def _retry(self) -> None:
        self._retry_call = None
        if self.state == "retrying":
            self._register()

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
                               verify_checksums=False)  # WireGuard authenticated them
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
            if key in device.peers:
                device.update_peer(key, allowed_ips=p.allowed_ips, endpoint=endpoint)
            else:
                device.add_peer(key, allowed_ips=p.allowed_ips, endpoint=endpoint)

    #: what the runtime serves to every roster peer on its tunnel addresses:
    #: DNS (UDP and TCP 53) and ping (ICMP/ICMPv6 echo); as netmap's
    #: dns_rule/echo_rule, one entry per peer so each peer's compiled sources
    #: are reused while the peer is unchanged
    OWN_RULES = (
        (frozenset({PROTO_UDP, PROTO_TCP}), ((53, 53),)),
        (frozenset({PROTO_ICMP, PROTO_ICMPV6}), ()),
    )

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

        def up(ports: list[Any]) -> Deferred:
            self.listeners = list(ports or [])
            self.state = "ready"
            return self._report_all(ACTIVE)

        def failed(failure: Any) -> Deferred:
            log.warn("account {account}: inbound listeners failed: {err}",
                     account=self.account_id, err=failure.getErrorMessage())
            self.listeners = []
            self.state = "ready"
            return self._report_all(ACTIVE)

        return d.addCallbacks(up, failed)

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

    def _report_all(self, status: int) -> Deferred:
        return DeferredList([self._report(sid, status) for sid in list(self.services)],
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


class AccountRegistry(MappingObserver):
    """Creates an :class:`AccountRuntime` per account with mappings, routes
    services to it, and tears it down when its last mapping goes."""

    def __init__(self, make_runtime: Callable[[str], AccountRuntime],
                 on_change: Callable[[str], None] | None = None,
                 on_removed: Callable[[str], Any] | None = None,
                 raw_of: Callable[[str], bytes | None] | None = None) -> None:
        self.make_runtime = make_runtime
        self.on_change = on_change  # e.g. evict the account's validation cache
        self.on_removed = on_removed  # e.g. close the account's upstream pools
        #: a service id -> the mapping store's serialized mapping (MappingStore.raw):
        #: runtimes keep that bytes object instead of serializing their own copy
        self.raw_of = raw_of
        self.runtimes: dict[str, AccountRuntime] = {}

    def _raw(self, mapping: pb.ProxyMapping) -> bytes:
        raw = None if self.raw_of is None else self.raw_of(mapping.id)
        return mapping.SerializeToString() if raw is None else raw

    def get(self, account_id: str) -> AccountRuntime | None:
        return self.runtimes.get(account_id)

    def _changed(self, account_id: str) -> None:
        if self.on_change is not None:
            self.on_change(account_id)

    def account_added(self, account_id: str) -> None:
        self.runtimes[account_id] = self.make_runtime(account_id)

    def account_removed(self, account_id: str) -> Deferred | None:
        runtime = self.runtimes.pop(account_id, None)
        self._changed(account_id)
        if runtime is None:
            return None
        d = runtime.stop()
        if self.on_removed is not None:
            d.addBoth(lambda _: self.on_removed(account_id))
        return d

    def mapping_added(self, mapping: pb.ProxyMapping) -> Deferred | None:
        self._changed(mapping.account_id)
        runtime = self.runtimes.get(mapping.account_id)
        return None if runtime is None else runtime.add_service(mapping, self._raw(mapping))

    def mapping_changed(self, old: pb.ProxyMapping, new: pb.ProxyMapping) -> Deferred | None:
        self._changed(new.account_id)
        runtime = self.runtimes.get(new.account_id)
        if runtime is not None:
            runtime.services[new.id] = raw = self._raw(new)
            if runtime.state == "failed":
                return runtime.add_service(new, raw)  # a fresh token: retry registration
            if runtime.state in ("registering", "retrying", "connecting"):
                runtime.offer_token(new)  # the next attempt sends the fresh token
            return runtime.service_changed(new)
        return None

    def mapping_refreshed(self, mapping: pb.ProxyMapping) -> Deferred | None:
        runtime = self.runtimes.get(mapping.account_id)
        if runtime is not None and mapping.id in runtime.services:
            # the store replaced its bytes (same content): share the new ones
            runtime.services[mapping.id] = self._raw(mapping)
        if runtime is not None and runtime.state == "failed":
            return runtime.add_service(mapping, self._raw(mapping))
        if runtime is not None and runtime.state in ("registering", "retrying", "connecting"):
            runtime.offer_token(mapping)
        return None

    def mapping_removed(self, mapping: pb.ProxyMapping) -> Deferred | None:
        self._changed(mapping.account_id)
        runtime = self.runtimes.get(mapping.account_id)
        return None if runtime is None else runtime.remove_service(mapping)

    def stop(self) -> Deferred:
        runtimes, self.runtimes = list(self.runtimes.values()), {}
        return DeferredList([r.stop() for r in runtimes], consumeErrors=True)
