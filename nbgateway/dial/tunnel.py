"""Tunnel dialer: targets on WireGuard peers, reached through the account's
netstack (the default when ``direct_upstream`` is false).

The dialer does not know about stacks or DNS.  The per-account runtime
plugs in an ``endpoint_factory(host, port, timeout) -> IStreamClientEndpoint``
(normally building :class:`nbgateway.netstack.endpoints.TunnelClientEndpoint`
after resolving ``host`` in the account's synthetic zone) with
:meth:`TunnelDialer.attach` when the embedded client is up, and removes it
with :meth:`TunnelDialer.detach` when the client stops.  Without a factory
every dial fails with :class:`~nbgateway.dial.ProxyNotConnectedError`
(502 ``Proxy Not Connected``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from nbgateway.dial import IUpstreamDialer, ProxyNotConnectedError

EndpointFactory = Callable[[str, int, float], Any]


@implementer(IUpstreamDialer)
class TunnelDialer:
    """``IUpstreamDialer`` over an account's tunnel."""

    def __init__(self, endpoint_factory: EndpointFactory | None = None) -> None:
        self.endpoint_factory = endpoint_factory

    @property
    def connected(self) -> bool:
        return self.endpoint_factory is not None

    def attach(self, endpoint_factory: EndpointFactory) -> None:
        self.endpoint_factory = endpoint_factory

    def detach(self) -> None:
        self.endpoint_factory = None

    def endpoint(self, host: str, port: int, timeout: float) -> Any:
        factory = self.endpoint_factory
        if factory is None:
            raise ProxyNotConnectedError("no embedded client for the account")
        return factory(host.strip("[]"), port, timeout)


def stack_endpoint_factory(stack: Any,
                           resolve: Callable[[str], str] | None = None) -> EndpointFactory:
    """An endpoint factory dialing through ``stack`` (a netstack ``Stack``);
    ``resolve`` maps a target host name to a tunnel IP (identity by default,
    so IP-literal targets work without DNS)."""
    from nbgateway.netstack.endpoints import TunnelClientEndpoint

    def factory(host: str, port: int, timeout: float) -> Any:
        ip = resolve(host) if resolve is not None else host
        return TunnelClientEndpoint(stack, ip, port, timeout=timeout)

    return factory
