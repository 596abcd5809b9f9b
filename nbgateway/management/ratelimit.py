"""Per-account rate limits of the REST API, on management's one keyed token bucket.

:class:`KeyedBuckets` is a sans-IO token bucket per key (the caller passes
``now``), bounded to ``max_keys`` buckets: past that the least recently used
bucket is dropped.  That is fair to active keys: a bucket unused for
``burst / rate`` seconds is full again, so dropping it loses nothing, and a
key only loses state when more than ``max_keys`` keys were active within that
time.  The SSO callback's per-address limit
(:class:`~nbgateway.management.sso.CallbackResource`) uses it too.

:class:`AccountRateLimit` holds two sets of buckets keyed by account id (not
by source address: one tenant behind many addresses is still one tenant, and
tenants behind one NAT do not share a budget):

* mutations (POST, PUT, PATCH, DELETE): each is a write transaction under the
  account's lock on the shared store, so they are limited tightly (default 20
  per second, bursts of 100: a Terraform apply or a script creating a hundred
  objects goes through at once, a loop cannot monopolise the store);
* reads (GET): snapshot reads, paged and without locks, so limited loosely
  (default 100 per second, bursts of 500: a dashboard page load reads a few
  routes, a client paging through thousands of peers is never refused), only
  to bound one account's share of the store thread pool.

A refused call is HTTP 429 with ``Retry-After`` (whole seconds, rounded up).
The check runs after authentication (the account is known then) in the store
thread pool, before the handler: :func:`nbgateway.management.api.limit_routes`
wraps each route's handler, so the REST API and the dashboard (which calls the
same handlers in-process, :mod:`nbgateway.management.ui.bridge`) share an
account's budget.  This module does no I/O; the clock is injected
(``reactor.seconds``; ``task.Clock`` in tests).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["DEFAULT_READ_RATE", "DEFAULT_WRITE_RATE", "MUTATING", "AccountRateLimit",
           "KeyedBuckets", "parse_rate", "retry_after"]

#: default ``--api-write-rate``: 20 mutations per second, bursts of 100
DEFAULT_WRITE_RATE = "20/100"
#: default ``--api-read-rate``: 100 reads per second, bursts of 500
DEFAULT_READ_RATE = "100/500"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: buckets kept per kind (accounts active at once; least recently used dropped)
MAX_KEYS = 10_000


class KeyedBuckets:
    """Token buckets by key: ``rate`` tokens per second, at most ``burst``. Not
    thread-safe (callers lock); no clock of its own."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_KEYS) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be positive, burst and max_keys at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """Take one token of ``key``'s bucket: 0.0 when taken, else the seconds
        until one will be there (nothing is taken then)."""
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - stamp) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


def parse_rate(text: str) -> tuple[float, int] | None:
    """``RATE/BURST`` (per second; e.g. ``20/100``) or ``RATE`` (burst = 5 x
    rate); ``0`` = no limit (None)."""
    raw = str(text).strip()
    rate_text, _, burst_text = raw.partition("/")
    try:
        rate = float(rate_text)
        burst = int(burst_text) if burst_text else None
    except ValueError:
        raise ValueError(f"{raw!r} is not RATE/BURST, e.g. 20/100 (0 = no limit)") from None
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"{raw!r}: the rate must be a non-negative number")
    if rate == 0:
        return None
    if burst is None:
        burst = max(1, math.ceil(rate * 5))
    if burst < 1:
        raise ValueError(f"{raw!r}: the burst must be at least 1")
    return rate, burst


class AccountRateLimit:
    """Thread-safe per-account limits for mutations and reads (either may be None: off)."""

    def __init__(self, write: tuple[float, int] | None, read: tuple[float, int] | None,
                 clock: Callable[[], float], max_keys: int = MAX_KEYS) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._write = KeyedBuckets(*write, max_keys=max_keys) if write else None
        self._read = KeyedBuckets(*read, max_keys=max_keys) if read else None
        #: refusals so far (mutations, reads)
        self.refused = [0, 0]

    @classmethod
    def from_settings(cls, write: str, read: str, clock: Callable[[], float]
                      ) -> AccountRateLimit | None:
        """From the flags' text; None when both are off."""
        w, r = parse_rate(write), parse_rate(read)
        return cls(w, r, clock) if (w or r) else None

    def admit(self, account_id: str, method: str) -> float:
        """0.0 when the call may run, else the seconds to wait."""
        mutating = method.upper() in MUTATING
        buckets = self._write if mutating else self._read
        if buckets is None:
            return 0.0
        with self._lock:
            wait = buckets.take(account_id, self._clock())
            if wait:
                self.refused[0 if mutating else 1] += 1
        return wait


def retry_after(wait: float) -> str:
    """``Retry-After`` for a wait in seconds: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait)))
