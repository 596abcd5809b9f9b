"""Status reports to management: coalesced per service, bounded in flight, retried.

:class:`StatusReporting` wraps a management client (like
:class:`~nbgateway.mgmt.certreport.CertificateReporting`); every attribute
but ``send_status_update`` passes through.  It owns what happens to a
``SendStatusUpdate`` between the gateway's components and the wire:

* **one report per service at a time**: a service's next report is sent only
  after its previous one was answered, so management applies a service's
  reports in the order they were made;
* **latest wins**: a report made while an earlier one of the same service
  still waits to be sent replaces it (the replaced call's Deferred fires with
  None at once: what it said is superseded);
* **bounded in flight**: at most ``max_in_flight`` calls are outstanding (a
  gateway bringing up 1,000 accounts no longer fires 10,000 calls at once,
  whose deadlines then expire in the management's queue); the rest wait here,
  one entry per service (memory bounded by the services served);
* **never lost to a transient failure**: a call failing with UNAVAILABLE,
  DEADLINE_EXCEEDED, CANCELLED or RESOURCE_EXHAUSTED (or while the client is
  not running) is retried with exponential backoff (``retry_initial`` doubling
  up to ``retry_max``, at most ``max_attempts`` sends) unless a newer report
  of the service replaced it meanwhile.  Before this, such a failure was
  logged at debug level and dropped, leaving the service ``pending`` in
  management for good with both sides idle.  Other failures (NOT_FOUND: the
  service is gone; INVALID_ARGUMENT, PERMISSION_DENIED) are final.

The Deferred a caller gets fires when its report was delivered (None), was
superseded (None), or with the failure of its first attempt (a retry then
carries on in the background), so callers see no longer delays than before.
:meth:`cancel_retries` cancels pending retries.  The clock is injected (``callLater``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from nbgateway import errors

log = Logger()

MAX_IN_FLIGHT = 128
RETRY_INITIAL = 1.0
RETRY_MAX = 30.0
MAX_ATTEMPTS = 12
#: services with a report waiting or in flight at most (beyond: refused at once)
MAX_ENTRIES = 200_000

RETRYABLE = (
    errors.ManagementUnavailableError,
    errors.ManagementTimeoutError,
    errors.ManagementCancelledError,
    errors.ManagementRateLimitedError,
)


@dataclass
class _Report:
    status: int
    kw: dict[str, Any]
    waiters: list[Deferred[None]] = field(default_factory=list)
    attempts: int = 0


@dataclass
class _Entry:
    #: the next report to send (None: nothing waiting)
    queued: _Report | None = None
    in_flight: bool = False
    #: a retry timer is pending (the entry is not in the ready queue meanwhile)
    timer: Any = None


class StatusReporting:
    """See the module docstring."""

    def __init__(self, client: Any, clock: Any, *, max_in_flight: int = MAX_IN_FLIGHT,
                 retry_initial: float = RETRY_INITIAL, retry_max: float = RETRY_MAX,
                 max_attempts: int = MAX_ATTEMPTS, max_entries: int = MAX_ENTRIES) -> None:
        self._client = client
        self._clock = clock
        self.max_in_flight = max_in_flight
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._ready: deque[tuple[str, str]] = deque()
        self._in_flight = 0
        self._stopped = False
        #: reports sent, retried, superseded before sending, given up (counters)
        self.sent = 0
        self.retried = 0
        self.superseded = 0
        self.dropped = 0
        directlyProvides(self, *providedBy(client))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def waiting(self) -> int:
        """Services with a report not yet sent (queued or waiting for a retry)."""
        return sum(1 for e in self._entries.values() if e.queued is not None)

    def send_status_update(self, service_id: str, account_id: str, status: int,
                           **kw: Any) -> Deferred[None]:
        key = (account_id, service_id)
        d: Deferred[None] = Deferred()
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_entries:
                d.errback(errors.ManagementUnavailableError("too many status reports waiting"))
                return d
            entry = self._entries[key] = _Entry()
        old = entry.queued
        entry.queued = _Report(status, kw, [d])
        if old is not None:  # superseded before it was sent
            self.superseded += 1
            for w in old.waiters:
                w.callback(None)
        if entry.timer is not None:  # a newer report does not wait for the retry
            entry.timer.cancel()
            entry.timer = None
            old = None
        if not entry.in_flight and old is None:
            self._ready.append(key)
        self._pump()
        return d

    def cancel_retries(self) -> None:
        """Cancel pending retries (their reports are dropped) and schedule no
        more: from now on a report is sent once (the gateway is stopping)."""
        self._stopped = True
        for key, entry in list(self._entries.items()):
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
                entry.queued = None
                if not entry.in_flight:
                    del self._entries[key]

    # -- sending ---------------------------------------------------------------------------

    def _pump(self) -> None:
        while self._in_flight < self.max_in_flight and self._ready:
            key = self._ready.popleft()
            entry = self._entries.get(key)
            if entry is None or entry.queued is None or entry.in_flight:
                continue
            self._send(key, entry)

    def _send(self, key: tuple[str, str], entry: _Entry) -> None:
        report = entry.queued
        assert report is not None
        entry.queued = None
        entry.in_flight = True
        self._in_flight += 1
        report.attempts += 1
        self.sent += 1
        account_id, service_id = key
        d = maybeDeferred(self._client.send_status_update, service_id, account_id,
                          report.status, **report.kw)
        d.addBoth(self._answered, key, entry, report)

    def _answered(self, result: Any, key: tuple[str, str], entry: _Entry,
                  report: _Report) -> None:
        self._in_flight -= 1
        entry.in_flight = False
        waiters, report.waiters = report.waiters, []
        if isinstance(result, Failure):
            for w in waiters:
                w.errback(result)
            retry = (result.check(*RETRYABLE) is not None and entry.queued is None
                     and report.attempts < self.max_attempts and not self._stopped)
            if retry:
                self.retried += 1
                entry.queued = report
                delay = min(self.retry_max, self.retry_initial * 2 ** (report.attempts - 1))
                entry.timer = self._clock.callLater(delay, self._retry, key, entry)
                log.debug("status report for {service} failed ({err}); retry in {delay:.1f} s",
                          service=key[1], err=result.getErrorMessage(), delay=delay)
            elif entry.queued is None:
                self.dropped += 1
                log.info("status report for {service} not delivered: {err}",
                         service=key[1], err=result.getErrorMessage())
        else:
            for w in waiters:
                w.callback(None)
        if entry.queued is not None and entry.timer is None:
            self._ready.append(key)
        elif entry.queued is None and entry.timer is None and self._entries.get(key) is entry:
            del self._entries[key]
        self._pump()

    def _retry(self, key: tuple[str, str], entry: _Entry) -> None:
        entry.timer = None
        if self._entries.get(key) is not entry or entry.queued is None:
            return
        if not entry.in_flight:
            self._ready.append(key)
        self._pump()
