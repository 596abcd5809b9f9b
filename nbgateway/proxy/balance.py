"""Load balancing and health of a path's targets (sans-IO).

Owns the state behind "several targets per path": which target the next
request goes to, which targets are out of rotation, and the per-target
counters exported as metrics.  Fed ``now`` (the injected clock's seconds) by
the reverse proxy and the active health checker; no reactor, no I/O.

- :class:`TargetPool`: the targets of one (service, path).  ``pick(now,
  exclude)`` chooses by the path's policy (round robin, or least in-flight
  requests with round robin among equals) among the targets in rotation.
- Passive health: ``failed(target, now)`` after a transport failure before
  any response byte (refused, reset, timeout); ``max_failures`` consecutive
  ones eject the target for a back-off (``backoff`` doubled per consecutive
  ejection, capped at ``max_backoff``).  When the back-off ends the target is
  back in rotation on probation: one success re-admits it for good (and
  resets the back-off), one failure ejects it again at once for twice as
  long.  Any response (whatever its status) is a success.
- Active health (optional): ``checked(target, ok, now)`` from the periodic
  HTTP check; ``max_failures`` consecutive failed checks take a target out,
  one passing check puts it back (and ends a passive ejection).
- When no target is in rotation the one whose ejection ends first is tried
  anyway (better an attempt than a certain 502).
- :class:`Balancers`: the pools of every installed route, keyed by (service,
  path), bounded; a changed target list keeps the state of the targets that
  stay.  Its ``collect`` exports per-target Prometheus metrics (labels
  ``service``, ``path``, ``target``; at most ``max_series`` targets).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error

from nbgateway.dial import DirectUpstreamDeniedError, ProxyNotConnectedError
from nbgateway.routes.balancing import DEFAULT_BALANCING, Balancing
from nbgateway.routes.paths import Route

#: methods a failed dial may be retried on another target (RFC 9110 9.2.2)
IDEMPOTENT_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))


def counts_against_target(exc: BaseException, timed_out: bool) -> bool:
    """Is a failed exchange a failure of the target (passive health)?  Every
    transport failure before a response: refused, reset, unreachable,
    timeout; not the gateway's own refusals (dial guard, no tunnel) nor a
    cancellation without timeout."""
    if timed_out:
        return True
    return not isinstance(exc, DirectUpstreamDeniedError | ProxyNotConnectedError
                          | defer.CancelledError | ValueError)


def never_reached_upstream(exc: BaseException) -> bool:
    """Did the failure happen while dialing, so no byte of the request reached
    any upstream?  (A failure on an established connection comes wrapped by
    the client as a response failure and is not one of these.)"""
    return isinstance(exc, error.ConnectError | ConnectionRefusedError) and not isinstance(
        exc, DirectUpstreamDeniedError)


#: bound on the (service, path) pools kept
MAX_POOLS = 50_000
#: bound on the target series exported as metrics
MAX_SERIES = 2_000


@dataclass(slots=True)
class TargetState:
    """One target's health and counters."""

    route: Route
    #: consecutive transport failures (passive)
    failures: int = 0
    #: consecutive ejections (the back-off exponent); 0 once re-admitted
    ejections: int = 0
    #: ejected until this time (0: not ejected)
    ejected_until: float = 0.0
    #: on probation after a back-off: the next failure ejects at once
    probation: bool = False
    #: active checks: consecutive failed checks, and out of rotation by them
    check_failures: int = 0
    check_down: bool = False
    inflight: int = 0
    requests: int = 0
    failures_total: int = 0
    ejections_total: int = 0

    @property
    def key(self) -> str:
        return self.route.target

    def in_rotation(self, now: float) -> bool:
        return not self.check_down and self.ejected_until <= now


@dataclass(slots=True)
class TargetPool:
    """The targets of one path and the state to choose among them."""

    service: str
    path: str
    balancing: Balancing = DEFAULT_BALANCING
    states: list[TargetState] = field(default_factory=list)
    #: the route the states were last taken from
    route: Route | None = None
    _next: int = 0

    @classmethod
    def of(cls, service: str, route: Route) -> TargetPool:
        pool = cls(service, route.path, route.balancing)
        pool.update(route)
        return pool

    def update(self, route: Route) -> None:
        """Take a (possibly changed) route: targets that stay keep their state."""
        old = {s.key: s for s in self.states}
        states = []
        for target in route.targets:
            st = old.get(target.target)
            if st is None:
                st = TargetState(target)
            else:
                st.route = target
            states.append(st)
        self.states = states
        self.balancing = route.balancing
        self.route = route
        self._next %= max(1, len(states))

    def state(self, target: Route) -> TargetState | None:
        for st in self.states:
            if st.key == target.target:
                return st
        return None

    # -- choosing --------------------------------------------------------------------

    def pick(self, now: float, exclude: Collection[str] = ()) -> TargetState | None:
        """The target for the next attempt (None: every target is excluded)."""
        skip = exclude
        states = self.states
        n = len(states)
        least = self.balancing.policy == "least_conn"
        chosen: TargetState | None = None
        at = 0
        for i in range(n):  # rotation order from _next; ties keep the first
            j = (self._next + i) % n
            s = states[j]
            if s.check_down or s.ejected_until > now or (skip and s.key in skip):
                continue
            if chosen is None or s.inflight < chosen.inflight:
                chosen, at = s, j
                if not least:
                    break
        if chosen is None:
            # nothing healthy: the one back soonest (active-down ones last)
            rest = [(s.check_down, s.ejected_until, j) for j, s in enumerate(states)
                    if not (skip and s.key in skip)]
            if not rest:
                return None
            at = min(rest)[2]
            chosen = states[at]
        self._next = (at + 1) % n
        return chosen

    # -- passive health ----------------------------------------------------------------

    def started(self, st: TargetState) -> None:
        st.inflight += 1
        st.requests += 1

    def ended(self, st: TargetState) -> None:
        st.inflight = max(0, st.inflight - 1)

    def succeeded(self, st: TargetState) -> None:
        """A response arrived from the target (any status)."""
        st.failures = 0
        if st.probation or st.ejected_until:
            st.probation = False
            st.ejected_until = 0.0
            st.ejections = 0

    def failed(self, st: TargetState, now: float) -> bool:
        """A transport failure before any response byte; True if it ejected
        the target."""
        st.failures += 1
        st.failures_total += 1
        if st.ejected_until > now:
            return False  # already out (a request that started before)
        if st.probation or st.failures >= self.balancing.max_failures:
            self._eject(st, now)
            return True
        return False

    def _eject(self, st: TargetState, now: float) -> None:
        b = self.balancing
        st.ejections += 1
        st.ejections_total += 1
        st.ejected_until = now + min(b.backoff * 2 ** min(st.ejections - 1, 30), b.max_backoff)
        st.failures = 0
        st.probation = True  # on probation when it comes back

    # -- active health -------------------------------------------------------------------

    def checked(self, st: TargetState, ok: bool, now: float) -> None:
        """One active check's result."""
        if ok:
            st.check_failures = 0
            st.check_down = False
            self.succeeded(st)
            return
        st.check_failures += 1
        if st.check_failures >= self.balancing.max_failures and not st.check_down:
            st.check_down = True
            st.ejections_total += 1

    def healthy(self, st: TargetState, now: float) -> bool:
        return st.in_rotation(now)


class Balancers:
    """Every route's :class:`TargetPool`, keyed by (service id or domain, path)."""

    def __init__(self, clock: Any = None, max_pools: int = MAX_POOLS,
                 max_series: int = MAX_SERIES) -> None:
        self.clock = clock
        self.max_pools = max_pools
        self.max_series = max_series
        self._pools: OrderedDict[tuple[str, str], TargetPool] = OrderedDict()
        #: service -> its paths with a pool (so forgetting a service is cheap)
        self._paths: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._pools)

    def pool(self, service: str, route: Route) -> TargetPool:
        """The pool of ``route`` (created, or updated if its targets changed)."""
        key = (service, route.path)
        pool = self._pools.get(key)
        if pool is not None and pool.route is route:
            return pool
        if pool is None:
            pool = self._pools[key] = TargetPool.of(service, route)
            self._paths.setdefault(service, set()).add(route.path)
            while len(self._pools) > self.max_pools:
                (old_service, old_path), _ = self._pools.popitem(last=False)
                self._drop_path(old_service, old_path)
        else:
            pool.update(route)
        return pool

    def get(self, service: str, path: str) -> TargetPool | None:
        return self._pools.get((service, path))

    def forget(self, service: str, keep_paths: Iterable[str] = ()) -> None:
        """Drop a service's pools (except those of ``keep_paths``)."""
        paths = self._paths.get(service)
        if not paths:
            return
        keep = set(keep_paths)
        for path in [p for p in paths if p not in keep]:
            self._pools.pop((service, path), None)
            self._drop_path(service, path)

    def _drop_path(self, service: str, path: str) -> None:
        paths = self._paths.get(service)
        if paths is not None:
            paths.discard(path)
            if not paths:
                del self._paths[service]

    def pools(self) -> list[TargetPool]:
        return list(self._pools.values())

    # -- metrics ---------------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """A prometheus_client custom-collector ``collect``."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = self.clock.seconds() if self.clock is not None else 0.0
        labels = ["service", "path", "target"]
        requests = CounterMetricFamily(
            "nbgateway_upstream_target_requests",
            "Requests sent to each target of a load-balanced path (attempts)", labels=labels)
        failures = CounterMetricFamily(
            "nbgateway_upstream_target_failures",
            "Transport failures before any response byte (refused, reset, timeout)",
            labels=labels)
        ejections = CounterMetricFamily(
            "nbgateway_upstream_target_ejections",
            "Times a target was taken out of rotation (passive or active health)",
            labels=labels)
        healthy = GaugeMetricFamily(
            "nbgateway_upstream_target_healthy",
            "1 while a target is in rotation", labels=labels)
        series = 0
        for pool in self._pools.values():
            for st in pool.states:
                if series >= self.max_series:
                    break
                series += 1
                values = [pool.service, pool.path, st.route.origin]
                requests.add_metric(values, st.requests)
                failures.add_metric(values, st.failures_total)
                ejections.add_metric(values, st.ejections_total)
                healthy.add_metric(values, 1 if st.in_rotation(now) else 0)
        yield from (requests, failures, ejections, healthy)

    def describe(self) -> list[Any]:
        return []
