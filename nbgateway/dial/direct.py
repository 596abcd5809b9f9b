"""Direct dialer: targets reached over the host network with host DNS
(``direct_upstream=true``; spec proxy.md 3.11).  Uses Twisted's
``HostnameEndpoint`` (RFC 8305-style happy eyeballs over every resolved
address), so a target given by name or by IPv4/IPv6 literal both work."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import HostnameEndpoint
from zope.interface import implementer

from nbgateway.dial import IUpstreamDialer


@implementer(IUpstreamDialer)
class DirectDialer:
    """``IUpstreamDialer`` over the host network."""

    def __init__(self, reactor: Any, bind_address: tuple[str, int] | None = None) -> None:
        self.reactor = reactor
        self.bind_address = bind_address

    def endpoint(self, host: str, port: int, timeout: float) -> HostnameEndpoint:
        host = host.strip("[]")
        return HostnameEndpoint(
            self.reactor, host.encode("idna") if not host.isascii() else host, port,
            timeout=timeout, bindAddress=self.bind_address,
        )
