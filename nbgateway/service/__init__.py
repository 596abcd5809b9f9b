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

This module owns the object graph and the start/stop order.  Its pieces that
need no gateway state live beside it: :mod:`._accounts` (an account's key
file and tunnel listeners), :mod:`._drain` (the shutdown's connection drain),
:mod:`._directdial` (the direct dialer's policy and refusal reports)
and :mod:`._observers` (startup health and CA constraints from mappings).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from nbgateway import tunnels
from nbgateway.accounts import AccountRegistry, AccountRuntime, AccountSettings, AccountStats
from nbgateway.auth.assertion import AssertionSigner
from nbgateway.auth.mtls import MtlsVerifier
from nbgateway.auth.mtls import tls_lookup as mtls_tls_lookup
from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache
from nbgateway.dial.direct import DenialReports, DirectDialStats
from nbgateway.dial.guard import Listener
from nbgateway.dial.pool import UpstreamPools
from nbgateway.dial.tunnel import TunnelDialer, stack_endpoint_factory
from nbgateway.dns.zone import ZoneAuthority, account_zones
from nbgateway.http.site import GatewayResource
from nbgateway.l4.wiring import attach_l4
from nbgateway.mgmt.certreport import CertificateReporting
from nbgateway.mgmt.statusreport import StatusReporting
from nbgateway.observe.accesslog import AccessLogger
from nbgateway.observe.health import HealthState, client_health_from_device, health_service
from nbgateway.observe.metrics import GatewayMetrics, InstrumentedClient
from nbgateway.proxy.h2relay import H2RelayMetrics
from nbgateway.proxy.headers import TrustedProxies
from nbgateway.proxy.healthcheck import HealthChecks
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.table import ServiceTable
from nbgateway.service._accounts import account_key, listen_inbound, peer_endpoint_refusal
from nbgateway.service._directdial import direct_dialer, own_listeners, report_dial_denied
from nbgateway.service._drain import ConnectionDrain
from nbgateway.service._observers import CAConstraints, SyncHealth
from nbgateway.service.loop import install as lean_dispatch
from nbgateway.store.mappings import MappingStore
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import (
    CLIENT_CERT_STATS,
    ClientTLSPolicy,
    SNIServerCreator,
    sni_visibility,
)
from nbgateway.tls.dispatch import TLSOrPlainFactory
from nbgateway.wireguard import udp
from nbgateway.wireguard.mux import DeviceMux

__all__ = ["GatewayService"]

#: the name the CA-constraints observer had before the package split (tests use it)
_CAConstraints = CAConstraints

log = Logger()


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
            serves=self._serves, owner=self._owner)
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
        self.store.add_observer(CAConstraints(self.certificates))
        #: L4 relays (tcp/tls/udp): binds before the account runtime reports ACTIVE
        self.l4 = attach_l4(self)
        self.store.add_observer(self.l4)
        self.store.add_observer(self.accounts)
        self.store.add_observer(SyncHealth(self.health))
        self.metrics.tunnel_cache = self.cache
        self.gate = PrivateGate(self.cache, self._in_roster)
        self.pools = UpstreamPools(reactor, tls_creator=ClientTLSPolicy())
        #: direct_upstream dials: the operator's allow-list (plus loopback for the
        #: embedded default's own account), never this gateway's listeners
        #: account key rotations, refused roster endpoints (nbgateway.accounts)
        self.account_stats = AccountStats()
        self.metrics.registry.register(self.account_stats)
        self.direct_stats = DirectDialStats()
        self.metrics.registry.register(self.direct_stats)
        self.metrics.registry.register(self.l4.stats)
        self.direct = direct_dialer(reactor, config, embedded, self.direct_stats,
                                    self._own_listeners)
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
        #: graceful shutdown: public connections, what is in flight, the final close
        self.drainer = ConnectionDrain(reactor, self.accounts, self.metrics.requests)
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
        self.proxy.forget_account(account_id)  # plans keep agents (and dialers)
        self.direct.forget_account(account_id)
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
        # the gate was asked when each private L4 relay began: ask it again
        # for the live ones (a revocation closes them, not only new ones)
        self.l4.revalidate(runtime.account_id)
        # and for the account's upgraded (WebSocket) connections of private services
        self.proxy.upgrades.revalidate(runtime.account_id, self.gate)
        self.health.set_client(runtime.account_id, client_health_from_device(
            runtime.device, self.reactor.seconds(), management_connected=True))

    def _in_roster(self, account_id: str, ip: str) -> bool:
        runtime = self.accounts.get(account_id)
        return runtime is not None and runtime.in_roster(ip)

    def _report_dial_denied(self, service: Any, exc: Any) -> None:
        """A refused direct dial becomes the service's status (ERROR with the
        reason), at most once a minute per service."""
        report_dial_denied(self.denial_reports, self.mgmt, self.reactor, service, exc)

    def _own_listeners(self) -> list[Listener]:
        """This gateway's TCP listeners on the host (the dial guard's deny set)."""
        return own_listeners(self.config, self.public_port, self.l4, self.embedded)

    def dialer_for(self, account_id: str, direct: bool) -> Any:
        if direct:
            return self.direct.for_account(account_id)
        runtime = self.accounts.get(account_id)
        if runtime is None or runtime.stack is None:
            return None
        if runtime.tunnel_dialer is None:  # once per account, not per request
            runtime.tunnel_dialer = TunnelDialer(stack_endpoint_factory(runtime.stack))
        return runtime.tunnel_dialer

    def account_key(self, account_id: str, fresh: bool = False) -> bytes:
        """The account's WireGuard private key, kept in ``DATADIR/accounts/``
        (see :func:`nbgateway.service._accounts.account_key`)."""
        return account_key(self.config.datadir, account_id, fresh)

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
                max_tcp_connections=cfg.max_tunnel_connections,
                endpoint_refusal=peer_endpoint_refusal,
                stats=self.account_stats,
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

    def _owner(self, name: str) -> str | None:
        """The account serving ``name``: its leaves come from that account's
        own local CA (nbgateway.tls.certstore)."""
        entry = self.routes.lookup(name)
        return entry.account_id if entry is not None else None

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
        HTTPS on the HTTPS port (each also accepting the other protocol), DNS
        (see :func:`nbgateway.service._accounts.listen_inbound`)."""
        return listen_inbound(runtime, self.web_factory, self.dns, self.reactor)

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
                    addr.port, self.drainer.track(web), interface=addr.host)
            except Exception as exc:
                self.udp_port.stopListening()
                raise listen_failed(exc, "the public TCP listener",
                                    "--addr / NB_PROXY_ADDRESS") from exc
            log.info("public listener on {addr}", addr=self.public_port.getHost())
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        lean_dispatch(self.reactor)  # no log context per ready descriptor (service/loop.py)
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
        then reset (deadline) or closed (idle), see :meth:`ConnectionDrain.close_remaining`;
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
        d.addBoth(lambda _: self.drainer.drain(
            self.reactor.seconds() + self.config.drain_timeout, self.drain_poll))
        d.addBoth(self.drainer.close_remaining)
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

    def reload(self) -> None:
        """SIGHUP: re-read the certificate directories now."""
        log.info("reloading certificates")
        self.certificates.reload()

    @property
    def wg_port(self) -> int:
        return self.udp_port.getHost().port if self.udp_port is not None else 0


