"""Admission of peer-channel Sync streams, fair between accounts.

A Sync stream is a coroutine on the management's gRPC loop (no thread of
its own), but it still holds memory and a share of the map rebuilds for as
long as the peer stays connected, so the number of streams is bounded
(``total``; the peer channel uses 4,096).  One bound alone
would let one account's peers take every slot and starve every other
account, including the gateways' proxy peers, which is how gateways learn
their network maps.  :class:`StreamSlots` therefore also bounds:

* per account and kind (proxy peer or ordinary peer): ``per_account``
  (default a quarter of ``total``, at least 1), so no account holds more
  than its share;
* ordinary peers together: ``total - reserved``; the ``reserved`` slots
  (default half) are for proxy peers only, so a crowd of ordinary peers
  never locks gateways out.

Plain data and a lock: safe to call from any thread.
"""

from __future__ import annotations

import threading
from collections import Counter


class StreamSlots:
    """See the module docstring."""

    def __init__(self, total: int, *, per_account: int | None = None,
                 reserved: int | None = None) -> None:
        if total < 1:
            raise ValueError("total must be >= 1")
        self.total = total
        self.per_account = per_account if per_account is not None else max(1, total // 4)
        self.reserved = reserved if reserved is not None else total // 2
        self._lock = threading.Lock()
        self._used = 0
        self._ordinary = 0
        self._by: Counter[tuple[str, bool]] = Counter()
        #: refusals by reason ("total", "ordinary", "account")
        self.refused: Counter[str] = Counter()

    def acquire(self, account_id: str, proxy: bool) -> bool:
        """Take a slot for a stream of ``account_id``; False when refused."""
        key = (account_id, proxy)
        with self._lock:
            if self._used >= self.total:
                reason = "total"
            elif not proxy and self._ordinary >= self.total - self.reserved:
                reason = "ordinary"
            elif self._by[key] >= self.per_account:
                reason = "account"
            else:
                self._used += 1
                self._ordinary += not proxy
                self._by[key] += 1
                return True
            self.refused[reason] += 1
            return False

    def release(self, account_id: str, proxy: bool) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        key = (account_id, proxy)
        with self._lock:
            if self._by[key] <= 0:
                return  # never taken: nothing to give back
            self._by[key] -= 1
            if not self._by[key]:
                del self._by[key]
            self._used -= 1
            self._ordinary -= not proxy

    def in_use(self) -> int:
        with self._lock:
            return self._used
