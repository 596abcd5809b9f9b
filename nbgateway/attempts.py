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

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["AttemptLimiter"]


@dataclass
class _Pair:
    first: float
    failures: int = 0
    locked_until: float = 0.0
    lockouts: int = 0


def _client_key(ip: str) -> str:
    """The key of a client address: an IPv6 address counts as its /64 (a
    single host is routinely given a whole /64, so per-/128 keys let one
    attacker rotate without bound); IPv4 and non-addresses as given."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return ip


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
        #: attempts reserved and not answered yet, per pair (see reserve)
        self._pending: dict[tuple[str, str], int] = {}
        self.refused = 0
        self.lockouts = 0

    def retry_after(self, service: str, ip: str, now: float) -> float:
        """Seconds until ``ip`` may try again on ``service`` (0: now)."""
        pair = self._pairs.get((service, _client_key(ip)))
        if pair is None or pair.locked_until <= now:
            return 0.0
        self.refused += 1
        return pair.locked_until - now

    def reserve(self, service: str, ip: str, now: float, in_flight: int = 1) -> float:
        """:meth:`retry_after`, and when it is 0 also a pending attempt
        (released by :meth:`release` when its answer arrives): guesses sent
        at once count against the pair before their answers do, so an
        address gets at most ``max_failures + in_flight`` attempts in flight
        or failed per window (a caller whose legitimate clients send
        concurrently, such as header auth, passes a larger ``in_flight``).
        Seconds to wait (0: go)."""
        wait = self.retry_after(service, ip, now)
        if wait:
            return wait
        key = (service, _client_key(ip))
        pair = self._pairs.get(key)
        failures = 0 if pair is None or now - pair.first > self.window else pair.failures
        pending = self._pending.get(key, 0)
        if failures + pending >= self.max_failures + in_flight:
            self.refused += 1
            return 1.0
        self._pending[key] = pending + 1
        return 0.0

    def release(self, service: str, ip: str) -> None:
        """A reserved attempt was answered (or its RPC failed)."""
        key = (service, _client_key(ip))
        left = self._pending.get(key, 0) - 1
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)

    def failed(self, service: str, ip: str, now: float) -> None:
        key = (service, _client_key(ip))
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
        self._pairs.pop((service, _client_key(ip)), None)
