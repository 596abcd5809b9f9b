"""Failure accounting for secret guesses, per (scope, client address).

Owns :class:`AttemptLimiter`, a plain class fed the clock's ``now``: the
gateway (:mod:`nbgateway.auth.ratelimit`) and management
(:mod:`nbgateway.management.authlimit`) both use it, so it sits on the
ground floor and imports nothing of either.

* Each (scope, IP) may fail ``max_failures`` times within ``window``
  seconds; the next failure locks that pair for ``lockout`` seconds, doubling
  on each further lockout up to ``max_lockout``.  A success clears the pair.
* A per-scope budget of ``service_failures`` failures per ``window`` bounds
  a guess campaign spread over many addresses: once it is spent, an address
  that has already failed is locked at its next failure.  An address with no
  failures of its own is never refused, so nobody can lock the legitimate
  user out from elsewhere.
* Memory is bounded: at most ``max_entries`` pairs (oldest dropped first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["AttemptLimiter"]


@dataclass
class _Pair:
    first: float
    failures: int = 0
    locked_until: float = 0.0
    lockouts: int = 0


class AttemptLimiter:
    def __init__(self, *, max_failures: int = 5, window: float = 300.0,
                 lockout: float = 60.0, max_lockout: float = 3600.0,
                 service_failures: int = 100, max_entries: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_lockout = max_lockout
        self.service_failures = service_failures
        self.max_entries = max_entries
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._service: dict[str, tuple[float, int]] = {}
        self.refused = 0
        self.lockouts = 0

    def retry_after(self, service: str, ip: str, now: float) -> float:
        """Seconds until ``ip`` may try again on ``service`` (0: now)."""
        pair = self._pairs.get((service, ip))
        if pair is None or pair.locked_until <= now:
            return 0.0
        self.refused += 1
        return pair.locked_until - now

    def failed(self, service: str, ip: str, now: float) -> None:
        key = (service, ip)
        pair = self._pairs.get(key)
        if pair is None or (now - pair.first > self.window and pair.locked_until <= now):
            lockouts = pair.lockouts if pair is not None else 0
            pair = _Pair(first=now, lockouts=lockouts)
            self._pairs[key] = pair
        self._pairs.move_to_end(key)
        pair.failures += 1
        start, count = self._service.get(service, (now, 0))
        if now - start > self.window:
            start, count = now, 0
        count += 1
        self._service[service] = (start, count)
        campaign = count > self.service_failures and pair.failures > 1
        if pair.failures > self.max_failures or campaign:
            duration = min(self.lockout * (2 ** pair.lockouts), self.max_lockout)
            pair.locked_until = now + duration
            pair.lockouts += 1
            pair.failures = 0
            pair.first = now
            self.lockouts += 1
        while len(self._pairs) > self.max_entries:
            self._pairs.popitem(last=False)
        if len(self._service) > self.max_entries:
            self._service.clear()

    def succeeded(self, service: str, ip: str) -> None:
        self._pairs.pop((service, ip), None)
