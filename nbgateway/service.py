"""GatewayService: the composition root of ``twistd nbgateway`` (and of the
library entry point).

Building a GatewayService creates objects only.  Sockets bind in
:meth:`privilegedStartService` (the WireGuard UDP port shared by every account,
the public listener, the health listener); the management client, its gRPC
threads and all timers start in :meth:`startService`.

Data flows one way (DEVELOPERS.md): UDP -> :class:`DeviceMux` -> per-account
WireGuard device -> netstack -> inbound listeners -> :class:`GatewayResource`
(auth) -> :class:`ReverseProxy` -> dialers (account tunnel or host network).
The management client fills the :class:`MappingStore`; its observers
(:class:`ServiceTable` for routing, :class:`AccountRegistry` for tunnels)
react.  The validation cache is evicted per account whenever that account's
services change or a network map for its proxy peer arrives.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from functools import partial
from typing import Any
from weakref import WeakSet

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from nbgateway import tunnels
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.accounts import AccountRegistry, AccountRuntime, AccountSettings
from nbgateway.auth.assertion import AssertionSigner
from nbgateway.auth.mtls import MtlsVerifier
from nbgateway.auth.mtls import tls_lookup as mtls_tls_lookup
from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache
from nbgateway.dial.direct import DenialReports, DirectDialer, DirectDialStats, is_host_address
from nbgateway.dial.guard import DialPolicy, Listener, parse_allow_list
from nbgateway.dial.pool import UpstreamPools
from nbgateway.dial.tunnel import TunnelDialer, stack_endpoint_factory
from nbgateway.dns.server import DNSResponderFactory, listen_dns
from nbgateway.dns.zone import ZoneAuthority, account_zones
from nbgateway.http.site import GatewayResource
from nbgateway.l4.wiring import attach_l4
from nbgateway.mgmt.certreport import CertificateReporting
from nbgateway.mgmt.statusreport import StatusReporting
from nbgateway.netstack.endpoints import TunnelServerEndpoint
from nbgateway.observe.accesslog import AccessLogger
from nbgateway.observe.health import HealthState, client_health_from_device, health_service
from nbgateway.observe.metrics import GatewayMetrics, InstrumentedClient
from nbgateway.proxy.h2relay import H2RelayMetrics
from nbgateway.proxy.headers import TrustedProxies
from nbgateway.proxy.healthcheck import HealthChecks
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.table import ServiceTable
from nbgateway.store.mappings import MappingObserver, MappingStore
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import (
    CLIENT_CERT_STATS,
    ClientTLSPolicy,
    SNIServerCreator,
    sni_visibility,
)
from nbgateway.tls.dispatch import TLSOrPlainFactory
from nbgateway.wireguard import udp
from nbgateway.wireguard.keys import generate_private_key, key_from_base64, key_to_base64
from nbgateway.wireguard.mux import DeviceMux

log = Logger()

class _Stoppable:
    """Adapts an object with ``stop()`` to the ``stopListening()`` of ports."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def stopListening(self) -> Any:
        return self.inner.stop()


class _BuiltOnFirstConnection(Factory):
    """A listener's factory that builds the real one on the first connection
    (an idle account's tunnel ports hold this object, not a site, resource,
    TLS creator and dispatcher: ~2.5 KiB an account).  The port is bound and
    answers at once; the build is synchronous, so the first connection is
    served by the real factory like every later one."""

    noisy = False  # no "Starting factory" line per account

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self.built: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        if self.built is None:
            if not self.numPorts:
                return None  # no port listening: refuse
            self.built = self._build()
            self.built.doStart()
        return self.built.buildProtocol(addr)

    def stopFactory(self) -> None:  # the last port stopped
        built, self.built = self.built, None
        if built is not None:
            built.doStop()


class _SyncHealth(MappingObserver):
    """Marks startup complete once a full snapshot was applied."""

    def __init__(self, health: HealthState) -> None:
        self.health = health

    def snapshot_reconciled(self, removed_ids: frozenset[str]) -> None:
        self.health.mark_initial_sync_complete()


class _CAConstraints(MappingObserver):
    """Widens the local CA's name constraints to a mapped domain when the
    mapping arrives, before any status report or handshake (nbgateway.tls.ca)."""

    def __init__(self, certificates: Any) -> None:
        self.certificates = certificates

    def mapping_added(self, mapping: pb.ProxyMapping) -> None:
        # TCP/UDP relays and TLS passthrough never get a certificate from us
        if mapping.domain and mapping.mode not in ("tcp", "udp", "tls") \
                and hasattr(self.certificates, "permit"):
            self.certificates.permit([mapping.domain])

    def mapping_changed(self, old: pb.ProxyMapping, new: pb.ProxyMapping) -> None:
        self.mapping_added(new)


class GatewayService(MultiService):
    """The gateway: build with a :class:`nbgateway.config.Config`."""

    def __init__(
        self,
        config: Any,
        *,
        reactor: Any = None,
        management: Any = None,
        peer_channel_factory: Callable[[str, bytes, Callable], Any] | None = None,
        embedded: Any = None,
        certificates: Any = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self.metrics = GatewayMetrics()
        self.health = HealthState()
        self.metrics.health = self.health
        #: the in-process management (no --mgmt); started before the client
        self.embedded = embedded
        if embedded is not None:
            embedded.setServiceParent(self)
        if management is not None:
            if hasattr(management, "setServiceParent"):
                management.setServiceParent(self)
            if hasattr(management, "on_connection_state"):
                management.on_connection_state = self.health.set_management_connected
            management = InstrumentedClient(management, self.metrics.rpc, reactor.seconds)
            # every status update carries the served certificate and the local CA
            management = CertificateReporting(management, self._certificate_status)
            # status reports: one per service at a time, latest wins, bounded in
            # flight, transient failures retried (a lost report left a service
            # pending for good)
            management = StatusReporting(management, reactor)
        self.mgmt = management
        self.peer_channel_factory = peer_channel_factory
        #: SNI certificates for every TLS listener (cert dir, wildcard dir, local CA)
        self.certificates = certificates if certificates is not None else CertificateStore(
            config.cert_dir or None, config.wildcard_cert_dir or None,
            data_dir=config.datadir, clock=reactor, default_name=config.domain or "localhost",
            serves=self._serves)
        if hasattr(self.certificates, "on_issued"):  # leaves are issued on demand
            self.certificates.on_issued = self._certificate_issued
        #: mTLS client certificates: CA bundles and verified chains, all listeners
        self.mtls = MtlsVerifier()
        self.metrics.registry.register(CLIENT_CERT_STATS)  # mTLS handshakes
        self.tls_creator = SNIServerCreator(  # per listener: see web_factory
            self.certificates, default_name=config.domain or "localhost",
            visible=sni_visibility(lambda name: self.routes.lookup(name)),
            client_auth=mtls_tls_lookup(lambda name: self.routes.lookup(name), self.mtls))
        self.mux = DeviceMux(reactor)  # handshake queue drained per reactor turn
        self.metrics.mux = self.mux
        self.store = MappingStore()
        self.cache = TunnelValidationCache(management, reactor, ttl=config.tunnel_cache_ttl)
        self.routes = ServiceTable(management)
        self.accounts = AccountRegistry(self._make_runtime, on_change=self._account_changed,
                                        on_removed=self._account_gone, raw_of=self.store.raw)
        self.store.add_observer(self.routes)
        self.store.add_observer(_CAConstraints(self.certificates))
        #: L4 relays (tcp/tls/udp): binds before the account runtime reports ACTIVE
        self.l4 = attach_l4(self)
        self.store.add_observer(self.l4)
        self.store.add_observer(self.accounts)
        self.store.add_observer(_SyncHealth(self.health))
        self.metrics.tunnel_cache = self.cache
        self.gate = PrivateGate(self.cache, self._in_roster)
        self.pools = UpstreamPools(reactor, tls_creator=ClientTLSPolicy())
        #: direct_upstream dials: the operator's allow-list (plus loopback for the
        #: embedded default's own account), never this gateway's listeners
        self.direct_stats = DirectDialStats()
        self.metrics.registry.register(self.direct_stats)
        self.metrics.registry.register(self.l4.stats)
        rules = parse_allow_list(getattr(config, "direct_upstream_allow", "") or "")
        if embedded is not None and hasattr(embedded, "direct_upstream_rules"):
            rules += embedded.direct_upstream_rules()
        self.direct = DirectDialer(reactor, stats=self.direct_stats, policy=DialPolicy(
            rules, listeners=self._own_listeners, is_local=is_host_address))
        self.denial_reports = DenialReports()
        self.proxy = ReverseProxy(
            reactor, self.pools, self.dialer_for,
            max_dial_timeout=config.max_dial_timeout,
            forwarded_proto=config.forwarded_proto,
            trusted_proxies=TrustedProxies(config.trusted_proxies),
        )
        self.routes.on_domain_gone = self.proxy.upgrades.close_domain
        #: several targets per path: active health checks, per-target metrics
        self.healthchecks = HealthChecks(self.proxy, reactor)
        self.store.add_observer(self.healthchecks)
        self.metrics.registry.register(self.proxy.balancers)
        self.metrics.registry.register(H2RelayMetrics(self.proxy))  # gRPC / h2 upstreams
        self.proxy.on_dial_denied = self._report_dial_denied
        #: X-NetBird-Jwt-Assertion for services that ask for it (issue 16)
        self.proxy.assertions = AssertionSigner(reactor)
        self.access_log = AccessLogger(management, reactor)
        self.metrics.access_log = self.access_log
        #: per-account synthetic DNS zones (served on each tunnel address, port 53)
        self.dns: dict[str, ZoneAuthority] = {}
        self.udp_port: Any = None
        self.public_port: Any = None
        #: the account runtimes' shared settings (_account_settings)
        self._settings: AccountSettings | None = None
        #: protocols accepted on the public listener (reset at the drain deadline)
        self._public_protocols: WeakSet[Any] = WeakSet()
        #: twistd mode only (``makeService``): SIGHUP reloads the certificates;
        #: a library host keeps its own signal handlers
        self.reload_on_sighup = False
        self._previous_sighup: Any = None
        #: --acme-certs: certificates for public domains from an ACME server
        self.acme: Any = None
        if getattr(config, "acme_certs", False):
            from nbgateway.acme.service import attach_acme

            self.acme = attach_acme(self)
        if config.health_addr is not None:
            health_service(reactor, config.health_addr.endpoint(), self.health,
                           self.metrics.registry).setServiceParent(self)

    # ------------------------------------------------------------------ wiring

    def _account_gone(self, account_id: str) -> Deferred:
        self.metrics.remove_account(account_id)
        self.health.remove_client(account_id)
        self.dns.pop(account_id, None)
        if self.proxy.h2 is not None:  # HTTP/2 (gRPC) upstream connections
            self.proxy.h2.close_account(account_id)
        return self.pools.close_account(account_id)

    def _account_changed(self, account_id: str) -> None:
        """The account's services or roster changed: forget cached validations
        and re-publish the domains it serves."""
        self.cache.evict_account(account_id)
        self._refresh_dns(account_id)

    def _refresh_dns(self, account_id: str) -> None:
        """The account's zone: its served domains pointing at its own tunnel
        address (management never sends those to the proxy peer) plus the
        network map's zones."""
        runtime = self.accounts.get(account_id)
        if runtime is None or runtime.network is None:
            return
        authority = self.dns.get(account_id)
        if authority is None:
            authority = self.dns[account_id] = ZoneAuthority()
        domains = [d for d, e in self.routes.entries.items() if e.account_id == account_id]
        domains += [e.service.domain for (acct, _p), e in self.routes.ports.items()
                    if acct == account_id and e.private and e.service.domain]  # private L4
        authority.replace(account_zones(runtime.network, domains))

    def _account_network(self, runtime: AccountRuntime, network: Any) -> None:
        """A network map was applied: forget the account's cached validations
        (management pushes one on every change that can revoke access: peer
        groups, peer deletion, user blocked, service access groups),
        (re)register the account's live objects and replace its DNS zones."""
        self.cache.evict_account(runtime.account_id)
        self._refresh_dns(runtime.account_id)
        self.metrics.add_account(runtime.account_id, devices=[runtime.device],
                                 stacks=[runtime.stack])
        self.l4.account_ready(runtime.account_id)  # private L4 on the tunnel address
        self.health.set_client(runtime.account_id, client_health_from_device(
            runtime.device, self.reactor.seconds(), management_connected=True))

    def _in_roster(self, account_id: str, ip: str) -> bool:
        runtime = self.accounts.get(account_id)
        return runtime is not None and runtime.in_roster(ip)

    def _report_dial_denied(self, service: Any, exc: Any) -> None:
        """A refused direct dial becomes the service's status (ERROR with the
        reason), at most once a minute per service."""
        if not service.service_id:
            return
        self.denial_reports.record(service.service_id, DenialReports.message(exc))
        if not self.denial_reports.due(service.service_id, self.reactor.seconds()):
            return
        log.warn("direct_upstream dial refused for account {account} service {service}: "
                 "{host}:{port} ({address}) {reason}", account=service.account_id,
                 service=service.service_id, host=exc.host, port=exc.port,
                 address=exc.address, reason=exc.reason)
        if self.mgmt is None:
            return
        maybeDeferred(
            self.mgmt.send_status_update, service.service_id, service.account_id,
            pb.PROXY_STATUS_ERROR, error_message=DenialReports.message(exc),
        ).addErrback(lambda f: log.debug("status report failed: {err}",
                                         err=f.getErrorMessage()))

    def _own_listeners(self) -> list[Listener]:
        """This gateway's TCP listeners on the host (the dial guard's deny set)."""
        cfg = self.config
        found: list[tuple[str, int]] = []
        for addr in (cfg.addr, cfg.health_addr):
            if addr is not None and addr.port:
                found.append((addr.host, addr.port))
        if self.public_port is not None:
            bound = self.public_port.getHost()
            found.append((getattr(bound, "host", ""), int(getattr(bound, "port", 0))))
        found.extend((self.l4.bind_host, port) for port in self.l4.public)  # L4 host ports
        if self.embedded is not None and hasattr(self.embedded, "listeners"):
            found.extend(self.embedded.listeners())
        if cfg.mgmt:  # a management on this host (loopback --mgmt)
            from urllib.parse import urlsplit

            parts = urlsplit(cfg.mgmt if "://" in cfg.mgmt else f"https://{cfg.mgmt}")
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                port = 0
            if parts.hostname and port:
                found.append((parts.hostname, port))
        out = []
        for host, port in found:
            try:
                out.append(Listener.of(host, port))
            except ValueError:
                continue
        return out

    def dialer_for(self, account_id: str, direct: bool) -> Any:
        if direct:
            return self.direct.for_account(account_id)
        runtime = self.accounts.get(account_id)
        if runtime is None or runtime.stack is None:
            return None
        if runtime.tunnel_dialer is None:  # once per account, not per request
            runtime.tunnel_dialer = TunnelDialer(stack_endpoint_factory(runtime.stack))
        return runtime.tunnel_dialer

    def account_key(self, account_id: str) -> bytes:
        """The account's WireGuard private key, kept in ``DATADIR/accounts/``
        (0600) so a restarted gateway keeps its tunnel identity: management
        re-registers the same proxy peer and stock peers' configs stay valid."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", account_id)[:64]
        name = f"{safe}-{hashlib.sha256(account_id.encode()).hexdigest()[:8]}.key"
        folder = os.path.join(self.config.datadir, "accounts")
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                return key_from_base64(f.read())
        except FileNotFoundError:
            pass
        except ValueError:
            log.warn("replacing unreadable account key {path}", path=path)
        key = generate_private_key()
        os.makedirs(folder, mode=0o700, exist_ok=True)
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_to_base64(key) + "\n")
        os.replace(tmp, path)
        return key

    def _account_settings(self) -> AccountSettings:
        """The runtimes' settings: one shared (frozen) object while the WireGuard
        port stays the same, not a copy per account."""
        cfg = self.config
        wanted = cfg.advertised_wg_endpoint(self.wg_port or None)
        settings = self._settings
        if settings is None or settings.wg_endpoint != wanted:
            settings = self._settings = AccountSettings(
                cluster=cfg.domain,
                wg_endpoint=wanted,
                private=cfg.private,
                http_port=cfg.tunnel_http_port,
                https_port=cfg.tunnel_https_port,
            )
        return settings

    def _make_runtime(self, account_id: str) -> AccountRuntime:
        return AccountRuntime(
            account_id,
            reactor=self.reactor,
            mux=self.mux,
            mgmt=self.mgmt,
            settings=self._account_settings(),
            peer_channel_factory=self.peer_channel_factory,
            serve_inbound=self.serve_inbound,
            on_network=self._account_network,
            key_factory=partial(self.account_key, account_id),  # smaller than a closure
            l4_status=self.l4.status,
            status_note=self.denial_reports.note,
            forget_note=self.denial_reports.forget,
        )

    def _certificate_status(self, service_id: str) -> dict[str, Any] | None:
        """The certificate served for a service's domain (see
        nbgateway.mgmt.certreport); None for TCP/UDP/TLS-passthrough services."""
        mapping = self.store.get(service_id)
        if mapping is None or not mapping.domain or mapping.mode in ("tcp", "udp", "tls") \
                or not hasattr(self.certificates, "describe"):
            return None
        return self.certificates.describe(mapping.domain)

    def _certificate_issued(self, name: str) -> None:
        """A local-CA leaf was issued for ``name`` (its first handshake, or a
        renewal): re-report the service so management records its expiry
        (status reports describe certificates without issuing them).  Called
        inside a TLS handshake: the report goes out on the next reactor turn."""
        entry = self.routes.lookup(name)
        if entry is None or not entry.service.service_id:
            return
        runtime = self.accounts.get(entry.account_id)
        if runtime is not None:
            self.reactor.callLater(0, runtime.report_again, entry.service.service_id)

    def _serves(self, name: str) -> bool:
        """Only names this gateway serves get a fallback certificate (random
        SNI names must not each cost a key generation)."""
        return self.routes.lookup(name) is not None or name == (self.config.domain or "")

    def site_for(self, listener_account: str | None) -> ProxySite:
        # upstream's servers: inbound read-header 30 s / idle 90 s, public 10 s / 120 s
        timeouts = {} if listener_account is not None else {"timeout": 120, "header_timeout": 10}
        return ProxySite(GatewayResource(
            lookup=self.routes.lookup, proxy=self.proxy, gate=self.gate,
            listener_account=listener_account, access_log=self.access_log,
            clock=self.reactor, request_stats=self.metrics.requests,
            allow_underscore_headers=self.config.allow_underscore_headers, mtls=self.mtls,
        ), **timeouts)

    def web_factory(self, listener_account: str | None) -> TLSOrPlainFactory:
        """HTTP and HTTPS on one port, decided per connection by the first byte,
        TLS terminated with the SNI certificate."""
        return TLSOrPlainFactory(self.tls_creator.for_listener(listener_account),
                                 self.site_for(listener_account), clock=self.reactor,
                                 handshake_timeout=self.config.handshake_timeout)

    def serve_inbound(self, runtime: AccountRuntime) -> Deferred:
        """The account's listeners on its tunnel address: HTTP on the HTTP port,
        HTTPS on the HTTPS port (each also accepting the other protocol), DNS."""
        cfg = runtime.settings
        # every address of the account's stack (its tunnel IPv4 and, if any, IPv6);
        # one factory (site, resource, TLS creator) serves both ports, built
        # on the account's first connection
        account_id = runtime.account_id
        web = _BuiltOnFirstConnection(partial(self.web_factory, account_id))
        listens = [
            TunnelServerEndpoint(runtime.stack, port).listen(web)
            for port in dict.fromkeys((cfg.http_port, cfg.https_port))
        ]
        d = DeferredList(listens, fireOnOneErrback=True, consumeErrors=True)
        d.addCallback(lambda results: [port for _ok, port in results])
        return d.addCallback(self._serve_dns, runtime)

    def _serve_dns(self, ports: list[Any], runtime: AccountRuntime) -> Deferred:
        """Add the DNS responder (UDP and TCP 53) to the account's listeners;
        a DNS bind failure is logged and leaves the web listeners up."""
        authority = self.dns.setdefault(runtime.account_id, ZoneAuthority())
        factory = DNSResponderFactory(authority, clock=self.reactor)
        d = listen_dns(runtime.stack, factory, interface="")

        def bound(listeners: Any) -> list[Any]:
            return [*ports, _Stoppable(listeners)]

        def failed(failure: Any) -> list[Any]:
            log.warn("account {account}: DNS responder not started: {err}",
                     account=runtime.account_id, err=failure.getErrorMessage())
            return ports

        return d.addCallbacks(bound, failed)

    # ------------------------------------------------------------------ lifecycle

    def privilegedStartService(self) -> None:
        from nbgateway.startup import listen_failed

        try:
            self.udp_port = udp.listen(self.reactor, self.mux, self.config.wg_port, interface="")
        except Exception as exc:  # CannotListenError: one line naming the port and flag
            raise listen_failed(exc, "WireGuard UDP", "--wg-port / NB_PROXY_WG_PORT") from exc
        log.info("WireGuard listening on UDP {port}; endpoint advertised to peers: {endpoint}",
                 port=self.udp_port.getHost().port,
                 endpoint=self.config.advertised_wg_endpoint(self.wg_port))
        addr = self.config.addr
        if addr is not None:
            # the public listener: non-private services on the host network;
            # private mappings are refused there (no listener account)
            web = self.web_factory(None)
            # L4 on the main port (TLS passthrough by SNI, fallback relay, inbound PROXY)
            self.l4.attach_main(web, lambda name: self.routes.lookup(name) is not None)
            try:
                self.public_port = self.reactor.listenTCP(
                    addr.port, self._tracked(web), interface=addr.host)
            except Exception as exc:
                self.udp_port.stopListening()
                raise listen_failed(exc, "the public TCP listener",
                                    "--addr / NB_PROXY_ADDRESS") from exc
            log.info("public listener on {addr}", addr=self.public_port.getHost())
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.certificates.start()
        _ = self.certificates.ca  # the local CA exists from the start (users trust its file)
        if self.reload_on_sighup:
            import signal

            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        if self.mgmt is not None:
            self.mgmt.subscribe_mappings(self.store)
        tunnels.registry.register(self, self.tunnel_stack)  # nbtunnel: endpoints

    def tunnel_stack(self, account_id: str) -> Any:
        """The netstack of ``account_id``'s tunnel, or None while the account
        has no running tunnel here (what ``nbtunnel:`` endpoints use)."""
        runtime = self.accounts.get(account_id)
        return runtime.stack if runtime is not None else None

    #: how often a graceful shutdown re-checks for in-flight requests (seconds)
    drain_poll = 0.05

    def stopService(self) -> Deferred:
        """Graceful shutdown: readiness fails first; every listener
        stops accepting (public, per-account tunnel web and DNS listeners);
        in-flight requests get up to ``--drain-timeout`` to finish (and their
        tunnel TCP send buffers to empty); client connections still open are
        then reset (deadline) or closed (idle), see :meth:`_close_remaining`;
        then the tunnels close, the pools and the access log flush, the
        children stop and the UDP port closes."""
        if self._previous_sighup is not None:
            import signal

            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        tunnels.registry.unregister(self)
        self.health.begin_shutdown()
        self.certificates.stop()
        self.proxy.upgrades.close_all()
        if self.proxy.h2 is not None:
            self.proxy.h2.close()
        self.healthchecks.stop()
        stops = [self.l4.close_all()]
        if self.public_port is not None:
            port, self.public_port = self.public_port, None
            stops.append(maybeDeferred(port.stopListening))
        for runtime in list(self.accounts.runtimes.values()):
            listeners, runtime.listeners = runtime.listeners, []
            stops.extend(maybeDeferred(p.stopListening) for p in listeners)
        d = DeferredList(stops, consumeErrors=True)
        d.addBoth(lambda _: self._drain(self.reactor.seconds() + self.config.drain_timeout))
        d.addBoth(self._close_remaining)
        d.addBoth(lambda _: self.accounts.stop())
        if isinstance(self.mgmt, StatusReporting):
            d.addBoth(lambda _: self.mgmt.cancel_retries())
        d.addBoth(lambda _: self.pools.close())
        d.addBoth(lambda _: self.access_log.stop(timeout=self.config.drain_timeout))
        d.addBoth(lambda _: super(GatewayService, self).stopService())

        def close_udp(result: Any) -> Any:
            self.mux.close()  # the queued initiations and their pending drain turn
            if self.udp_port is not None:
                port, self.udp_port = self.udp_port, None
                return maybeDeferred(port.stopListening).addBoth(lambda _: result)
            return result

        return d.addBoth(close_udp)

    def _in_flight(self) -> tuple[int, int]:
        """(HTTP requests in flight, bytes queued in tunnel TCP send buffers)."""
        queued = 0
        for runtime in self.accounts.runtimes.values():
            tcp = getattr(runtime.stack, "tcp", None)
            for conn in list(getattr(tcp, "conns", {}).values()):
                queued += getattr(conn, "send_queued", 0)
        return self.metrics.requests.active, queued

    def _drain(self, deadline: float) -> Deferred:
        """Fires once nothing is in flight (with False), or at ``deadline``
        (with True; polled every :attr:`drain_poll` seconds; immediately when
        already idle)."""
        done: Deferred = Deferred()

        def poll() -> None:
            requests, queued = self._in_flight()
            if not requests and not queued:
                done.callback(False)
            elif self.reactor.seconds() >= deadline:
                log.warn("drain timeout: {requests} request(s) still in flight, {queued} "
                         "byte(s) unsent; resetting their connections",
                         requests=requests, queued=queued)
                done.callback(True)
            else:
                self.reactor.callLater(self.drain_poll, poll)

        requests, _queued = self._in_flight()
        if requests:
            log.info("draining {requests} in-flight request(s)", requests=requests)
        poll()
        return done

    def _tracked(self, factory: Any) -> Any:
        """``factory`` remembering (weakly) every protocol it builds, so the
        connections the public listener accepted can be closed at shutdown."""
        build = factory.buildProtocol

        def build_protocol(addr: Any) -> Any:
            protocol = build(addr)
            if protocol is not None:
                self._public_protocols.add(protocol)
            return protocol

        factory.buildProtocol = build_protocol
        return factory

    def _close_remaining(self, timed_out: Any) -> None:
        """After the drain: close every client connection still open before the
        tunnels go away, so no client is left waiting on a silent socket.  At
        the drain deadline (``timed_out`` True) they are reset: host sockets
        with ``abortConnection`` (SO_LINGER 0: RST), tunnel TCP connections by
        the netstack's RST; after a complete drain (only idle keep-alive
        connections remain) they are closed normally (FIN).  Never raises."""
        abort = timed_out is True
        closed = 0
        for protocol in list(self._public_protocols):
            transport = getattr(protocol, "transport", None)
            if transport is None or not getattr(transport, "connected", False):
                continue
            try:
                transport.abortConnection() if abort else transport.loseConnection()
                closed += 1
            except Exception:
                log.failure("closing a public connection at shutdown")
        for runtime in list(self.accounts.runtimes.values()):
            tcp = getattr(runtime.stack, "tcp", None)
            conns = list(getattr(tcp, "conns", {}).values())
            try:
                if abort and conns:
                    closed += len(conns)
                    tcp.close()  # RST on every connection, users see ConnectionLost
                    continue
                for conn in conns:
                    user = getattr(conn, "user", None)
                    if user is not None and hasattr(user, "loseConnection"):
                        user.loseConnection()
                        closed += 1
            except Exception:
                log.failure("closing tunnel connections of {account} at shutdown",
                            account=runtime.account_id)
        if closed:
            log.info("shutdown: {how} {count} remaining client connection(s)",
                     how="reset" if abort else "closed", count=closed)

    def reload(self) -> None:
        """SIGHUP: re-read the certificate directories now."""
        log.info("reloading certificates")
        self.certificates.reload()

    @property
    def wg_port(self) -> int:
        return self.udp_port.getHost().port if self.udp_port is not None else 0


