"""Management's own bound on secret guesses (password, PIN, header value).

Owns a thread-safe wrapper around the ground-floor
:class:`~nbgateway.attempts.AttemptLimiter` for the ``Authenticate``
RPC, which gRPC runs on many threads.  The key is (service, end-user
address): a gateway names the address it saw in the ``x-nbgw-client-ip``
metadata; without it the calling proxy's token id stands in.  A locked key
gets ``success=false`` without an argon2id verification (no CPU for a
guesser).  Looser than the gateway's limiter (10 failures per 5 minutes
before a lockout), so it only acts for a proxy that does not limit, and an
address without failures of its own is never refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from nbgateway.attempts import AttemptLimiter

__all__ = ["CLIENT_IP_METADATA", "GuessLimiter"]

#: gRPC metadata key a gateway sets on Authenticate: the end user's address
CLIENT_IP_METADATA = "x-nbgw-client-ip"
#: attempts of one key in flight beyond the failure bound: generous, as the
#: key of a proxy that names no address is the proxy itself (all its users)
IN_FLIGHT = 64


class GuessLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 limiter: AttemptLimiter | None = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._limiter = limiter if limiter is not None else AttemptLimiter(
            max_failures=10, window=300.0, lockout=60.0, max_lockout=3600.0,
            service_failures=1000)

    @property
    def lockouts(self) -> int:
        return self._limiter.lockouts

    def locked(self, service: str, who: str) -> bool:
        with self._lock:
            return self._limiter.retry_after(service, who, self._clock()) > 0

    def reserve(self, service: str, who: str, in_flight: int = IN_FLIGHT) -> bool:
        """Not locked, and fewer than ``max_failures + in_flight`` attempts
        of the key failed or in flight: the attempt is counted as in flight
        until :meth:`record` (with ``reserved=True``) answers it.  Without
        it, guesses arriving at once on gRPC's threads all passed the lock
        check before any failure was recorded."""
        with self._lock:
            return self._limiter.reserve(service, who, self._clock(), in_flight) == 0

    def record(self, service: str, who: str, success: bool, reserved: bool = False) -> None:
        with self._lock:
            if reserved:
                self._limiter.release(service, who)
            if success:
                self._limiter.succeeded(service, who)
            else:
                self._limiter.failed(service, who, self._clock())
