"""``twistd nbgateway``: options and ``makeService`` (builds objects only).

``makeService`` turns the validated :class:`~nbgateway.config.Config` into a
:class:`~nbgateway.service.GatewayService`.  No socket is bound, no thread or
gRPC channel started here: that happens when twistd starts the service, after
it daemonized (nothing live before fork).
"""

from __future__ import annotations

from typing import Any

from nbgateway.options import Options

__all__ = ["Options", "build_gateway", "makeService"]


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
    filter_twistd_logs(gateway, config.log_format, getattr(options, "parent", None))
    return gateway

