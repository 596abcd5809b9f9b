"""Upstream dialers: how the reverse proxy reaches a target host:port.

Two implementations of :class:`IUpstreamDialer`:

- :class:`nbgateway.dial.direct.DirectDialer` -- the host network stack and
  host DNS (``direct_upstream=true``), guarded per
  account by :class:`nbgateway.dial.guard.DialPolicy` (the operator's
  ``--direct-upstream-allow`` list; never the gateway's own listeners);
- :class:`nbgateway.dial.tunnel.TunnelDialer` -- through an account's
  WireGuard netstack (the default), via a pluggable endpoint factory.

:mod:`nbgateway.dial.pool` keeps persistent HTTP connection pools per
(account, dial mode, TLS policy) and builds ``twisted.web.client.Agent``
objects over a dialer.

(``IUpstreamDialer`` and the ``UpstreamError`` family live here until they
are moved to ``nbgateway.interfaces`` / ``nbgateway.errors``.)
"""

from __future__ import annotations

from zope.interface import Interface

from nbgateway.errors import NBGatewayError


class IUpstreamDialer(Interface):
    """Builds client endpoints towards upstream targets."""

    def endpoint(host: str, port: int, timeout: float):  # noqa: N805
        """An ``IStreamClientEndpoint`` for ``host:port`` whose ``connect``
        gives up after ``timeout`` seconds.  Raises
        :class:`ProxyNotConnectedError` when the dialer has no way out
        (e.g. the account's embedded client is not running)."""


class UpstreamError(NBGatewayError):
    """Reaching an upstream failed."""


class ProxyNotConnectedError(UpstreamError):
    """No embedded client (tunnel) for the account: 502 ``Proxy Not Connected``."""


class DirectUpstreamDeniedError(UpstreamError):
    """A direct dial refused by the operator's policy before any connection
    (:mod:`nbgateway.dial.guard`): ``reason`` is one of its deny reasons."""

    def __init__(self, reason: str, host: str, port: int, address: str = "") -> None:
        self.reason = reason
        self.host = host
        self.port = port
        self.address = address
        where = f"{host}:{port}" + (f" ({address})" if address and address != host else "")
        super().__init__(f"direct upstream {where} not allowed: {reason}")
