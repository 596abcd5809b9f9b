"""The sans-IO renewal schedule: which domain needs an ACME order, and when.

A domain is *wanted* while a public mapping names it.  It is due at once when
it has no certificate, at two thirds of its certificate's lifetime otherwise
(or at the renewal time the server's ARI offered, when given).  A failed
attempt is retried after an exponential backoff (``base`` doubling per
consecutive failure up to ``cap``) with +-``jitter`` spread, or later when the
server asked for it (Retry-After).  At most ``concurrency`` orders run at once.
Nothing here does I/O or reads a clock: every call is fed ``now`` (seconds).

Tenants: each domain has an *owner* (the account of its mapping; "" when the
caller names none).  One named owner tracks at most ``max_per_owner``
domains (of the ``max_domains`` all share), and :meth:`RenewalSchedule.due`
takes due domains owner by owner, the owner whose last order began longest
ago first, so one account with many due (or always failing) domains cannot
keep another account's new domain waiting behind all of them for the few
order slots every account shares.  The CA's limits are shared too (one ACME
account: Let's Encrypt allows 300 new orders per account in 3 hours), so
one named owner begins at most ``max_orders_per_owner`` orders (default: a
quarter of that) in any ``order_window``: an owner whose names never
validate retries them within its own budget and cannot leave another
account's new domain ``rateLimited``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_BACKOFF_BASE = 60.0
DEFAULT_BACKOFF_CAP = 6 * 3600.0
DEFAULT_JITTER = 0.2
RENEW_FRACTION = 2.0 / 3.0
DEFAULT_MIN_INTERVAL = 10.0
#: one owner's orders per window: a quarter of Let's Encrypt's 300 new orders
#: per account per 3 hours, the limit every owner of the ACME account shares
DEFAULT_ORDERS_PER_OWNER = 75
DEFAULT_ORDER_WINDOW = 3 * 3600.0


@dataclass
class DomainState:
    """What the schedule knows about one domain."""

    name: str
    next_at: float = 0.0
    not_before: float | None = None
    not_after: float | None = None
    failures: int = 0
    last_error: str = ""
    in_flight: bool = False
    attempts: int = 0
    owner: str = ""


class RenewalSchedule:
    """See the module docstring."""

    def __init__(self, *, backoff_base: float = DEFAULT_BACKOFF_BASE,
                 backoff_cap: float = DEFAULT_BACKOFF_CAP, jitter: float = DEFAULT_JITTER,
                 concurrency: int = 1, max_domains: int = 10_000,
                 max_per_owner: int | None = None,
                 min_interval: float = DEFAULT_MIN_INTERVAL,
                 max_orders_per_owner: int = DEFAULT_ORDERS_PER_OWNER,
                 order_window: float = DEFAULT_ORDER_WINDOW,
                 rand: Callable[[], float] = random.random) -> None:
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.jitter = jitter
        self.concurrency = concurrency
        self.min_interval = min_interval
        self.max_domains = max_domains
        #: one owner's share of ``max_domains`` (default: a quarter)
        self.max_per_owner = max_per_owner if max_per_owner is not None else \
            max(1, max_domains // 4)
        self.rand = rand
        self.domains: dict[str, DomainState] = {}
        #: owner -> domains tracked
        self.owned: dict[str, int] = {}
        #: owner -> when its last order began (see :meth:`due`)
        self.served: dict[str, float] = {}
        self.max_orders_per_owner = max_orders_per_owner
        self.order_window = order_window
        #: named owner -> when its orders of the last ``order_window`` began
        #: (kept when its domains are dropped: re-adding them resets nothing)
        self.begun: dict[str, deque[float]] = {}

    # -- what the mappings say ------------------------------------------------
    def want(self, name: str, now: float, owner: str = "") -> bool:
        """Track ``name`` for ``owner`` (due now unless already tracked);
        False when the schedule or the owner's share is full."""
        if name in self.domains:
            return True
        if len(self.domains) >= self.max_domains:
            return False
        held = self.owned.get(owner, 0)
        if owner and held >= self.max_per_owner:  # "": no owner named, no share
            return False
        self.owned[owner] = held + 1
        self.domains[name] = DomainState(name, next_at=now, owner=owner)
        return True

    def drop(self, name: str) -> None:
        st = self.domains.pop(name, None)
        if st is None:
            return
        held = self.owned.get(st.owner, 0) - 1
        if held > 0:
            self.owned[st.owner] = held
        else:
            self.owned.pop(st.owner, None)
            self.served.pop(st.owner, None)

    # -- what the certificate directory says -----------------------------------
    def have_certificate(self, name: str, not_before: float, not_after: float,
                         renew_at: float | None = None) -> None:
        """A certificate for ``name`` exists: next attempt at its renewal time."""
        st = self.domains.get(name)
        if st is None:
            return
        st.not_before, st.not_after = not_before, not_after
        st.next_at = renew_at if renew_at is not None else self.renewal_time(not_before,
                                                                             not_after)

    @staticmethod
    def renewal_time(not_before: float, not_after: float) -> float:
        return not_before + (not_after - not_before) * RENEW_FRACTION

    # -- the orders ----------------------------------------------------------
    def budget_free_at(self, owner: str) -> float:
        """When ``owner`` may begin its next order (-inf: now; "" has no budget)."""
        times = self.begun.get(owner)
        if not owner or times is None or len(times) < self.max_orders_per_owner:
            return float("-inf")
        return times[-self.max_orders_per_owner] + self.order_window

    def _prune(self, now: float) -> None:
        for owner in list(self.begun):
            times = self.begun[owner]
            while times and times[0] <= now - self.order_window:
                times.popleft()
            if not times:
                del self.begun[owner]

    def due(self, now: float) -> list[str]:
        """Domains to order now (marked in flight), within the concurrency:
        one per owner in turn, the owner served longest ago first (never
        served: first), each owner's earliest due domain first."""
        free = self.concurrency - sum(1 for s in self.domains.values() if s.in_flight)
        if free <= 0:
            return []
        self._prune(now)
        queues: dict[str, list[DomainState]] = {}
        for st in sorted(self.domains.values(), key=lambda s: (s.next_at, s.name)):
            if st.next_at > now:
                break
            if not st.in_flight and self.budget_free_at(st.owner) <= now:
                queues.setdefault(st.owner, []).append(st)
        never = float("-inf")
        owners = sorted(queues, key=lambda o: (self.served.get(o, never),
                                               queues[o][0].next_at, o))
        out: list[str] = []
        depth = 0
        while free > 0 and owners:
            for owner in owners:
                if free <= 0:
                    break
                st = queues[owner][depth]
                st.in_flight = True
                st.attempts += 1
                self.served[owner] = now
                if owner:
                    self.begun.setdefault(owner, deque()).append(now)
                out.append(st.name)
                free -= 1
            depth += 1
            owners = [o for o in owners
                      if len(queues[o]) > depth and self.budget_free_at(o) <= now]
        return out

    def succeeded(self, name: str, not_before: float, not_after: float,
                  renew_at: float | None = None, now: float | None = None) -> None:
        """A new certificate: next attempt at its renewal time, but never
        sooner than ``min_interval`` after ``now`` (a certificate whose
        renewal time has already passed must not make orders back to back)."""
        st = self.domains.get(name)
        if st is None:
            return
        st.in_flight = False
        st.failures = 0
        st.last_error = ""
        self.have_certificate(name, not_before, not_after, renew_at)
        if now is not None:
            st.next_at = max(st.next_at, now + self.min_interval)

    def failed(self, name: str, now: float, error: str,
               retry_after: float | None = None) -> float | None:
        """Record a failed attempt; returns the time of the next one."""
        st = self.domains.get(name)
        if st is None:
            return None
        st.in_flight = False
        st.failures += 1
        st.last_error = error
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (st.failures - 1))
        delay *= 1.0 + self.jitter * (2.0 * self.rand() - 1.0)
        when = now + delay
        if retry_after is not None:
            when = max(when, retry_after)
        st.next_at = when
        return when

    def next_wakeup(self) -> float | None:
        """When :meth:`due` next has something (None: nothing waits): a
        domain's time, or later when its owner's order budget is spent."""
        times = [max(s.next_at, self.budget_free_at(s.owner))
                 for s in self.domains.values() if not s.in_flight]
        return min(times) if times else None
