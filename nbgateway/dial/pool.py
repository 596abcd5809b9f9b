"""Persistent upstream connection pools and the Agents that use them.

One ``HTTPConnectionPool`` per (account, dial mode, TLS verification mode):
connections to a given upstream (scheme, host, port) are reused across
requests of that account only, never across accounts or between the
verifying and the ``skip_tls_verify`` transport (a separate insecure
transport, as upstream keeps).  Defaults follow the upstream transport knobs:
100 idle connections per host, 90 s idle timeout.

``tls_creator(hostname, skip_verify)`` returns an
``IOpenSSLClientConnectionCreator`` for https targets; it is injected (see
:class:`nbgateway.tls.contexts.ClientTLSPolicy`) so this layer does not
depend on the TLS layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import wrapClientTLS
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

DEFAULT_MAX_IDLE_PER_HOST = 100
DEFAULT_IDLE_TIMEOUT = 90.0

TLSCreator = Callable[[str, bool], Any]


@implementer(IAgentEndpointFactory)
class _DialerEndpointFactory:
    """Adapts an ``IUpstreamDialer`` (plus TLS for https) to the Agent."""

    def __init__(self, dialer: Any, timeout: float, skip_verify: bool,
                 tls_creator: TLSCreator | None) -> None:
        self.dialer = dialer
        self.timeout = timeout
        self.skip_verify = skip_verify
        self.tls_creator = tls_creator

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("idna") if isinstance(uri.host, bytes) else uri.host
        return self.endpoint(host, uri.port, uri.scheme in (b"https", "https"))

    def endpoint(self, host: str, port: int, tls: bool) -> Any:
        host = host.strip("[]")
        ep = self.dialer.endpoint(host, port, self.timeout)
        if tls:
            if self.tls_creator is None:
                raise ValueError("https target but no client TLS policy configured")
            ep = wrapClientTLS(self.tls_creator(host, self.skip_verify), ep)
        return ep


class UpstreamPools:
    """Pools keyed (account, direct, skip_verify); builds per-request Agents."""

    def __init__(self, reactor: Any, *, tls_creator: TLSCreator | None = None,
                 max_idle_per_host: int = DEFAULT_MAX_IDLE_PER_HOST,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self.reactor = reactor
        self.tls_creator = tls_creator
        self.max_idle_per_host = max_idle_per_host
        self.idle_timeout = idle_timeout
        self._pools: dict[tuple[str, bool, bool], HTTPConnectionPool] = {}

    def pool(self, account_id: str, direct: bool, skip_verify: bool) -> HTTPConnectionPool:
        key = (account_id, direct, skip_verify)
        pool = self._pools.get(key)
        if pool is None:
            pool = HTTPConnectionPool(self.reactor, persistent=True)
            pool.maxPersistentPerHost = self.max_idle_per_host
            pool.cachedConnectionTimeout = self.idle_timeout
            self._pools[key] = pool
        return pool

    def endpoint_factory(self, dialer: Any, *, timeout: float,
                         skip_verify: bool) -> _DialerEndpointFactory:
        return _DialerEndpointFactory(dialer, timeout, skip_verify, self.tls_creator)

    def agent(self, account_id: str, dialer: Any, *, direct: bool, skip_verify: bool,
              timeout: float) -> Agent:
        """An Agent dialing with ``dialer`` (dial timeout ``timeout``) that
        reuses the pooled connections of this account/mode."""
        return Agent.usingEndpointFactory(
            self.reactor, self.endpoint_factory(dialer, timeout=timeout, skip_verify=skip_verify),
            pool=self.pool(account_id, direct, skip_verify),
        )

    def idle_connections(self, account_id: str | None = None) -> int:
        """Cached (idle) connections, for tests and metrics."""
        return sum(
            len(conns) for key, pool in self._pools.items()
            if account_id is None or key[0] == account_id
            for conns in pool._connections.values()
        )

    def close_account(self, account_id: str) -> Any:
        """Drop an account's pools (its tunnel went away)."""
        from twisted.internet.defer import gatherResults

        keys = [k for k in self._pools if k[0] == account_id]
        return gatherResults([self._pools.pop(k).closeCachedConnections() for k in keys])

    def close(self) -> Any:
        from twisted.internet.defer import gatherResults

        pools, self._pools = list(self._pools.values()), {}
        return gatherResults([p.closeCachedConnections() for p in pools])
