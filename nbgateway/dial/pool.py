"""Persistent upstream connection pools and the agents that use them.

One :class:`~nbgateway.dial.http11.ConnectionPool` (the lean HTTP/1.1
client) per (account, dial mode, TLS verification mode):
connections to a given upstream (scheme, host, port) are reused across
requests of that account only, never across accounts or between the
verifying and the ``skip_tls_verify`` transport (a separate insecure
transport, as upstream keeps).  Defaults follow the upstream transport knobs:
100 idle connections per host, 90 s idle timeout; one pool keeps at most
``max_idle_per_pool`` idle connections over all its targets (a share of the
process's descriptor budget, :mod:`nbgateway.dial.fdbudget`).  Agents
(:class:`~nbgateway.dial.http11.LeanAgent`) are cached per (account, mode,
verification, dialer, timeout), so a request on a pooled keep-alive
connection constructs no agent and no endpoint; a new connection builds its
(guarded or tunnel) endpoint when it dials.  The lazy endpoint factory below
is kept for the ``Upgrade`` splice and callers that want an ``Agent``.

``tls_creator(hostname, skip_verify)`` returns an
``IOpenSSLClientConnectionCreator`` for https targets; it is injected (see
:class:`nbgateway.tls.contexts.ClientTLSPolicy`) so this layer does not
depend on the TLS layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import fail
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from nbgateway.dial.deadlines import Deadlines
from nbgateway.dial.fdbudget import account_share
from nbgateway.dial.http11 import ConnectionPool, LeanAgent

DEFAULT_MAX_IDLE_PER_HOST = 100
DEFAULT_IDLE_TIMEOUT = 90.0

TLSCreator = Callable[[str, bool], Any]


#: bound on the cached Agents and lazy endpoints (cleared when exceeded)
MAX_CACHED = 1024


@implementer(IStreamClientEndpoint)
class _LazyEndpoint:
    """Builds the dialer's endpoint only when a NEW connection is needed.

    The Agent asks for an endpoint on every request, even when the pool then
    hands it an idle connection; the real endpoint (a guarded or tunnel
    endpoint, whose construction resolves names and checks policy) is made
    per connect, so nothing a dial decides is cached."""

    def __init__(self, factory: _DialerEndpointFactory, host: str, port: int,
                 tls: bool) -> None:
        self.factory = factory
        self.host = host
        self.port = port
        self.tls = tls

    def connect(self, protocolFactory: Any) -> Any:
        try:
            ep = self.factory.endpoint(self.host, self.port, self.tls)
        except Exception:
            return fail()
        return ep.connect(protocolFactory)


@implementer(IAgentEndpointFactory)
class _DialerEndpointFactory:
    """Adapts an ``IUpstreamDialer`` (plus TLS for https) to the Agent."""

    def __init__(self, dialer: Any, timeout: float, skip_verify: bool,
                 tls_creator: TLSCreator | None) -> None:
        self.dialer = dialer
        self.timeout = timeout
        self.skip_verify = skip_verify
        self.tls_creator = tls_creator
        self._lazy: dict[tuple[bytes, int, bool], _LazyEndpoint] = {}

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.host, uri.port, uri.scheme in (b"https", "https"))
        if key[2] and self.tls_creator is None:
            raise ValueError("https target but no client TLS policy configured")
        ep = self._lazy.get(key)
        if ep is None:
            if len(self._lazy) >= MAX_CACHED:
                self._lazy.clear()
            host = uri.host.decode("idna") if isinstance(uri.host, bytes) else uri.host
            ep = self._lazy[key] = _LazyEndpoint(self, host, uri.port, key[2])
        return ep

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
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_idle_per_pool: int | None = None) -> None:
        self.reactor = reactor
        self.tls_creator = tls_creator
        self.max_idle_per_host = max_idle_per_host
        self.idle_timeout = idle_timeout
        #: idle connections one pool (an account's, per mode and verification)
        #: keeps over all its targets: an eighth of the descriptor budget, so
        #: an account's two direct pools keep at most a quarter (0: no bound)
        self.max_idle_per_pool = (account_share(fraction=8) if max_idle_per_pool is None
                                  else max_idle_per_pool)
        self._pools: dict[tuple[str, bool, bool], ConnectionPool] = {}
        #: one shared timer for the idle timeouts of every pool here and the
        #: request deadlines of a proxy on the same clock (ReverseProxy uses
        #: it); a lingering timer is cancelled when the last pool closes
        self.deadlines = Deadlines(reactor)
        #: one Agent per (account, mode, verification, dialer, timeout): built
        #: once, not per request; the dialer itself is kept to compare identity
        self._agents: dict[tuple[Any, ...], tuple[Any, LeanAgent]] = {}

    def pool(self, account_id: str, direct: bool, skip_verify: bool) -> ConnectionPool:
        key = (account_id, direct, skip_verify)
        pool = self._pools.get(key)
        if pool is None:
            pool = ConnectionPool(self.reactor, self.max_idle_per_host, self.idle_timeout,
                                  self.deadlines, max_idle=self.max_idle_per_pool)
            self._pools[key] = pool
        return pool

    def endpoint_factory(self, dialer: Any, *, timeout: float,
                         skip_verify: bool) -> _DialerEndpointFactory:
        return _DialerEndpointFactory(dialer, timeout, skip_verify, self.tls_creator)

    def agent(self, account_id: str, dialer: Any, direct: bool, skip_verify: bool,
              timeout: float) -> LeanAgent:
        """An agent dialing with ``dialer`` (dial timeout ``timeout``) that
        reuses the pooled connections of this account/mode (cached: the same
        arguments give the same Agent).  The proxy calls it per request with
        positional arguments (keywords cost the call more)."""
        key = (account_id, direct, skip_verify, id(dialer), timeout)
        cached = self._agents.get(key)
        if cached is not None and cached[0] is dialer:
            return cached[1]
        if len(self._agents) >= MAX_CACHED:
            self._agents.clear()
        factory = self.endpoint_factory(dialer, timeout=timeout, skip_verify=skip_verify)
        agent = LeanAgent(self.pool(account_id, direct, skip_verify), factory.endpoint)
        self._agents[key] = (dialer, agent)
        return agent

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
        for k in [k for k in self._agents if k[0] == account_id]:
            del self._agents[k]
        dropped = [self._pools.pop(k) for k in keys]
        for pool in dropped:
            pool.retired = True  # an agent kept by a route's plan is asked for again
        closed = gatherResults([pool.closeCachedConnections() for pool in dropped])
        if not self._pools:
            self.deadlines.disarm_idle()  # the last pool: no lingering timer left
        return closed

    def close(self) -> Any:
        from twisted.internet.defer import gatherResults

        pools, self._pools = list(self._pools.values()), {}
        self._agents.clear()
        for pool in pools:
            pool.retired = True
        closed = gatherResults([p.closeCachedConnections() for p in pools])
        self.deadlines.stop_lingering()  # shutting down: nothing left in the reactor
        return closed
