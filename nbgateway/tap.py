"""``twistd nbgateway``: options and ``makeService`` (builds objects only).

``makeService`` turns the validated :class:`~nbgateway.config.Config` into a
:class:`~nbgateway.service.GatewayService`.  No socket is bound, no thread or
gRPC channel started here: that happens when twistd starts the service, after
it daemonized (nothing live before fork).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service

from nbgateway.options import Options

__all__ = ["HeapFreezer", "Options", "build_gateway", "makeService"]

#: seconds after start at which the long-lived heap is frozen (accounts are
#: normally up by the first; the second catches a slow first sync)
HEAP_FREEZE_AFTER = (10.0, 60.0)


class HeapFreezer(Service):
    """Moves the objects alive after start-up out of the cyclic garbage
    collector's view: ``gc.freeze()`` at each of :data:`HEAP_FREEZE_AFTER`,
    the first one preceded by a ``gc.collect()`` (a full collection is itself
    such a pause, so only the first, normally before any traffic, pays it).

    Why: a full (generation 2) collection walks every tracked object; with the
    gateway's start-up heap (modules, the management client, each account's
    device and stack: ~70,000 objects) one took 60-200 ms on the shared 2-core
    box, every few seconds under request load.  The reactor stalls that long,
    a peer's kernel sends tail-loss probes after ~200 ms without an ACK, and
    the p99 latency was that pause (issue 20: 20-50 client retransmissions in
    5 s, p99 150-430 ms, no drops anywhere).  Frozen objects are never
    collected, so a cycle among them that dies later (or cyclic garbage
    present at the later freeze) is leaked: bounded by the heap of those two
    moments.  twistd only (``makeService``); a library host keeps its own GC
    policy."""

    def __init__(self, reactor: Any, delays: tuple[float, ...] = HEAP_FREEZE_AFTER,
                 collect: Callable[[], Any] = gc.collect,
                 freeze: Callable[[], Any] = gc.freeze) -> None:
        self.reactor = reactor
        self.delays = delays
        self._collect = collect
        self._freeze = freeze
        self._calls: list[Any] = []
        self.freezes = 0

    def startService(self) -> None:
        super().startService()
        self._calls = [self.reactor.callLater(d, self.freeze_now) for d in self.delays]

    def stopService(self) -> Any:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        return super().stopService()

    def freeze_now(self) -> None:
        if not self.freezes:
            self._collect()
        self._freeze()
        self.freezes += 1


def build_gateway(config: Any, reactor: Any = None, environ: Any = None) -> Any:
    """The library entry point: a GatewayService for ``config`` (attach it to
    your own Application/MultiService; it touches no global logging)."""
    from nbgateway import __version__
    from nbgateway.mgmt.client import GrpcManagementClient
    from nbgateway.service import GatewayService

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    embedded = None
    mgmt_url, token = config.mgmt, config.token
    if config.embedded:
        from nbgateway.embedded import embedded_addresses, grpc_url

        api_addr, grpc_addr = embedded_addresses(environ)
        mgmt_url, token = grpc_url(grpc_addr), ""
    client = GrpcManagementClient(
        reactor, mgmt_url, token,
        address=config.domain,
        version=__version__,
        private=config.private,
        supports_custom_ports=config.supports_custom_ports,
        require_subdomain=config.require_subdomain,
        allow_insecure=config.allow_insecure,
        batch_watchdog=config.mapping_batch_watchdog,
    )
    if config.embedded:
        from nbgateway.embedded import EmbeddedManagement

        embedded = EmbeddedManagement(config, client, reactor=reactor, api_addr=api_addr,
                                      grpc_addr=grpc_addr)
    return GatewayService(config, reactor=reactor, management=client, embedded=embedded,
                          peer_channel_factory=_peer_channel_factory(config, mgmt_url, reactor))


def _peer_channel_factory(config: Any, mgmt_url: str, reactor: Any) -> Any:
    """Per-account peer-channel sessions: log in with the account's WireGuard
    key and hand every network map, converted, to the account runtime."""
    from nbgateway import __version__
    from nbgateway.mgmt.netmap import convert
    from nbgateway.mgmt.peerclient import PeerChannelClient

    def factory(account_id: str, private_key: bytes, on_network: Any) -> Any:
        return PeerChannelClient(
            reactor, mgmt_url, private_key, lambda nm: on_network(convert(nm)),
            hostname=f"nbgateway-{account_id}", version=__version__,
            allow_insecure=config.allow_insecure)

    return factory


def makeService(options: Options) -> Any:
    """twistd only (a library host keeps its own logging and signals): the
    log level of every log destination (twistd's ``-l FILE`` / stdout / syslog
    text log, ``--log-format json``, and nbgateway's observer factories
    ``--logger=nbgateway.observe.logging.jsonObserverFactory`` or
    ``textObserverFactory``) and SIGHUP -> certificate reload."""
    from nbgateway.observe.logging import PROCESS_LEVEL, filter_twistd_logs, log_level

    config = options.config
    PROCESS_LEVEL.set(log_level(config.effective_log_level))
    gateway = build_gateway(config)
    gateway.reload_on_sighup = True  # installed at start, restored at stop
    HeapFreezer(gateway.reactor).setServiceParent(gateway)  # issue 20: GC pauses
    filter_twistd_logs(gateway, config.log_format, getattr(options, "parent", None))
    return gateway

