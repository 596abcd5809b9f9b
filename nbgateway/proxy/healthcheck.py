"""Active HTTP health checks of load-balanced paths (the reactor side).

:class:`HealthChecks` is a mapping-store observer (the ``MappingObserver``
methods of :mod:`nbgateway.store.mappings`, without importing the store):
when an HTTP mapping is installed, each of its paths whose balancing asks
for active checks (``health_path``) gets a ``LoopingCall`` on the injected
clock that sends ``GET health_path`` to every target of the path each
``health_interval``, through the same upstream client and dialer the proxy
uses (tunnel, or the guarded host network for ``direct_upstream``).  A
response with the expected status (default: any 2xx/3xx) within
``health_timeout`` passes; anything else fails.  Results feed the path's
:class:`~nbgateway.proxy.balance.TargetPool`.  Loops stop when the mapping
changes (new ones start) or goes away, and at :meth:`stop`; the pools of a
removed mapping are forgotten, so the balancer state stays bounded by the
installed mappings.  At most one check per target is in flight.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from nbgateway.dial import DirectUpstreamDeniedError, ProxyNotConnectedError
from nbgateway.proxy.balance import TargetPool, TargetState
from nbgateway.proxy.failures import root_cause
from nbgateway.routes.service import TargetOptions, entry_from_mapping, is_l4

log = Logger()

USER_AGENT = b"nbgateway-health-check"


class _Drain(Protocol):
    """Reads a check's response body to the end (so the connection can be reused)."""

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


class _PathChecks:
    """The loop of one (service, path)."""

    def __init__(self, owner: HealthChecks, account_id: str, pool: TargetPool) -> None:
        self.owner = owner
        self.account_id = account_id
        self.pool = pool
        self.busy: set[str] = set()
        self.loop = task.LoopingCall(self.run)
        self.loop.clock = owner.clock

    def start(self) -> None:
        self.loop.start(self.pool.balancing.health_interval, now=True)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def run(self) -> None:
        for st in list(self.pool.states):
            if st.key not in self.busy:
                self.probe(st)

    def probe(self, st: TargetState) -> None:
        proxy = self.owner.proxy
        b = self.pool.balancing
        route = st.route
        opts = TargetOptions.of(route.options)
        dialer = proxy.dialer_for(self.account_id, opts.direct_upstream)
        if dialer is None:
            return  # no tunnel yet: no verdict on the target
        url = f"{route.scheme}://{route.netloc}{b.health_path}".encode("latin-1")
        agent = proxy.pools.agent(self.account_id, dialer, direct=opts.direct_upstream,
                                  skip_verify=opts.skip_tls_verify, timeout=b.health_timeout)
        self.busy.add(st.key)
        d = defer.maybeDeferred(agent.request, b"GET", url,
                                Headers({b"user-agent": [USER_AGENT]}), None)
        timer = self.owner.clock.callLater(b.health_timeout, d.cancel)

        def done(result: Any) -> None:
            self.busy.discard(st.key)
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                exc = root_cause(result)
                if isinstance(exc, DirectUpstreamDeniedError | ProxyNotConnectedError):
                    return  # the gateway's own refusal says nothing about the target
                ok, why = False, repr(exc)
            else:
                result.deliverBody(_Drain())
                ok, why = b.healthy_status(result.code), f"status {result.code}"
            was = self.pool.healthy(st, self.owner.clock.seconds())
            self.pool.checked(st, ok, self.owner.clock.seconds())
            now_ok = self.pool.healthy(st, self.owner.clock.seconds())
            if was != now_ok:
                log.info("health check: target {target} {state} ({why})", target=route.origin,
                         state="healthy" if now_ok else "unhealthy", why=why,
                         service=self.pool.service, path=self.pool.path)

        d.addBoth(done)
        d.addErrback(lambda f: log.failure("health check failed", failure=f))


class HealthChecks:
    """Starts and stops the active checks of installed mappings."""

    def __init__(self, proxy: Any, clock: Any) -> None:
        self.proxy = proxy
        self.clock = clock
        self.checks: dict[str, list[_PathChecks]] = {}

    def _start(self, mapping: Any) -> None:
        if is_l4(mapping.mode):
            return
        key = mapping.id or mapping.domain
        if len(self.proxy.balancers):
            self.proxy.balancers.forget(key, keep_paths={pm.path for pm in mapping.path})
        if not any(pm.options.nbgw_balancing.health_path for pm in mapping.path):
            return  # no active checks: nothing to parse (a mapping storm stays cheap)
        service = entry_from_mapping(mapping).service
        loops = []
        for route in service.router.routes:
            if not route.balancing.active:
                continue
            pool = self.proxy.balancers.pool(key, route)
            checks = _PathChecks(self, service.account_id, pool)
            loops.append(checks)
            checks.start()
        if loops:
            self.checks[key] = loops

    def _stop(self, mapping: Any, forget: bool) -> None:
        key = mapping.id or mapping.domain
        for checks in self.checks.pop(key, []):
            checks.stop()
        if forget:
            self.proxy.balancers.forget(key)

    def stop(self) -> None:
        """Stop every loop (gateway shutdown)."""
        for loops in self.checks.values():
            for checks in loops:
                checks.stop()
        self.checks.clear()

    # -- MappingObserver ---------------------------------------------------

    def account_added(self, account_id: str) -> None:
        return None

    def account_removed(self, account_id: str) -> None:
        return None

    def mapping_added(self, mapping: Any) -> None:
        self._start(mapping)

    def mapping_changed(self, old: Any, new: Any) -> None:
        self._stop(old, forget=old.id != new.id)
        self._start(new)

    def mapping_refreshed(self, mapping: Any) -> None:
        return None

    def mapping_removed(self, mapping: Any) -> None:
        self._stop(mapping, forget=True)

    def snapshot_reconciled(self, removed_ids: frozenset[str]) -> None:
        return None
