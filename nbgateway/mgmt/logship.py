"""Access-log shipping: a bounded queue drained in batches, one call in flight.

:class:`LogShipper` owns the path from "a request finished" to "management
stored its entry".  Per request it only appends to a bounded deque (full: the
entry is dropped and counted); no grpcio call object, thread or timer is made
per request.  Entries linger up to ``linger`` seconds (or until ``max_batch``
are queued) and then go out as ONE ``NbgwSendAccessLogBatch`` call (grpcio's
future API through the client's bridge: grpcio's own threads do the I/O and
serialisation waits, the reactor only builds the request).  At most one batch
is in flight; entries arriving meanwhile form the next batch.

* Retries never duplicate: each entry carries its ``log_id``, which our
  management treats as an idempotency key, so a batch whose answer was lost is
  simply sent again.
* Retries never lose silently: a failed batch is retried with exponential
  backoff up to ``max_attempts`` times, then dropped and counted
  (``stats.dropped``).  A refusal that retrying cannot fix (invalid argument,
  permission denied) drops the batch at once, counted as failed.
* Fallback: a management without the extension answers UNIMPLEMENTED; the
  shipper remembers that for the lifetime of its client connection and sends
  the same batch (and all later ones) as one ``SendAccessLog`` per entry, at
  most ``fallback_inflight`` at a time; only entries that failed are retried.
* Bounded work per reactor turn: a batch is formed (:meth:`LogShipper.new_batch`,
  :meth:`LogShipper.take`: the access log builds its entries straight into the
  request's repeated field) at most ``form_slice`` entries per reactor turn; a
  larger batch goes on in the next turn (``callLater(0)``) and is sent when
  complete, so a burst of entries never stalls the reactor for the whole
  batch at once.
* Per entry, :meth:`LogShipper.submit` is a length check, an append, a count
  and one comparison with ``_kick``, the queue length at which the shipper
  has something to do (1 when idle: start the linger timer; ``max_batch``
  while the timer runs; never while a batch is formed, in flight or waiting
  for its retry: the queue is picked up afterwards).  ``_kick`` is set anew
  (:meth:`LogShipper._settle`) at the end of everything the reactor calls in
  the shipper besides ``submit``: the timers, the batch's answer, ``stop``.

The class is fed entries and a clock; the client is anything with
``send_access_log(entry) -> Deferred`` and optionally
``send_access_log_batch(entries) -> Deferred`` (the gRPC client, or a fake).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbgateway import errors

log = Logger()

#: errors after which sending the same entries again cannot succeed
_PERMANENT = (errors.ManagementInvalidArgumentError, errors.ManagementPermissionDeniedError)


@dataclass
class ShipperStats:
    #: entries accepted into the queue
    queued: int = 0
    #: entries management acknowledged
    sent: int = 0
    #: entries management refused for good (invalid, not permitted)
    failed: int = 0
    #: entries dropped: queue full, retries exhausted, or unsent at shutdown
    dropped: int = 0
    #: batch calls made (entries per call = sent / batches)
    batches: int = 0
    #: failed attempts that were retried
    retries: int = 0


class LogShipper:
    """Bounded queue + batching + one call in flight (see module docstring)."""

    def __init__(
        self,
        client: Any,
        clock: IReactorTime,
        *,
        max_queue: int = 20000,
        max_batch: int = 1000,
        linger: float = 0.05,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        send_timeout: float = 10.0,
        fallback_inflight: int = 16,
        form_slice: int = 64,
    ) -> None:
        self.client = client
        self.clock = clock
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.linger = linger
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.send_timeout = send_timeout
        self.fallback_inflight = fallback_inflight
        #: at most this many queued items become batch entries per reactor turn
        self.form_slice = max(1, form_slice)
        self.stats = ShipperStats()
        #: False once management answered UNIMPLEMENTED (or the client has no batch call)
        self.batch_supported = callable(getattr(client, "send_access_log_batch", None))
        self._queue: deque[Any] = deque()
        # the batch being formed, in flight or waiting for its retry (any sized
        # iterable of entries: a list, or the access log's repeated field)
        self._batch: Sequence[Any] = []
        self._attempt = 0
        self._inflight = False  # a batch is being formed or is in flight
        self._forming = 0  # entries still to take from the queue for the forming batch
        self._timer: IDelayedCall | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self._stopped = False
        #: entries the queue takes (``max_queue``; 0 once stopped)
        self._room = max_queue
        #: the queue length at which :meth:`submit` acts (see the module docstring)
        self._kick = 1

    # -- reactor-thread API ----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Entries queued or in the current batch."""
        return len(self._queue) + len(self._batch)

    def submit(self, entry: Any) -> None:
        """Queue one entry; never blocks, never raises."""
        queue = self._queue
        if len(queue) < self._room:
            queue.append(entry)
            self.stats.queued += 1
            if len(queue) >= self._kick:
                self._kicked()
        else:
            self.stats.dropped += 1

    def _kicked(self) -> None:
        """The queue reached ``_kick``: start the linger timer, or a full
        batch (or every entry, without a linger) at once."""
        if not (self._inflight or self._batch):  # else: picked up afterwards
            if len(self._queue) >= self.max_batch or self.linger <= 0:
                self._cancel_timer()
                self._next()
            elif self._timer is None:
                self._timer = self.clock.callLater(self.linger, self._linger_over)
        self._settle()

    def _settle(self) -> None:
        """``_kick`` for the state the shipper is in now (called last by every
        entry point but :meth:`submit`)."""
        if self._inflight or self._batch:
            self._kick = 1 << 62  # the batch (or its retry) picks the queue up afterwards
        elif self.linger <= 0 or self._timer is None:
            self._kick = 1
        else:
            self._kick = max(1, self.max_batch)

    def stop(self, timeout: float = 5.0) -> Deferred[None]:
        """Accept no more entries; send what is queued now (a pending retry is
        tried at once) and fire when all was attempted or after ``timeout``
        seconds (what is left then is counted as dropped)."""
        self._stopped = True
        self._room = 0
        if self.pending == 0 and not self._inflight:
            return succeed(None)
        if not self._inflight:
            self._cancel_timer()
            self._next()
            self._settle()
            if self.pending == 0 and not self._inflight:
                return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)

        def give_up() -> None:
            if d.called:
                return
            self.stats.dropped += self.pending
            self._queue.clear()
            self._batch = []
            self._cancel_timer()
            if self._forming:  # a batch was being formed, nothing is in flight
                self._forming = 0
                self._inflight = False
            self._idle_waiters.remove(d)
            self._settle()
            d.callback(None)

        call = self.clock.callLater(timeout, give_up)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    def prepare(self, item: Any) -> Any:
        """A queued item as the entry to send, when its batch is formed
        (subclasses queue something cheaper than the entry; an exception
        drops the item, counted)."""
        return item

    def new_batch(self) -> Any:
        """An empty batch to form (a sized iterable the client's batch call
        takes; ``add_to_batch`` fills it)."""
        return []

    def add_to_batch(self, batch: Any, item: Any) -> None:
        """Add one queued item to the forming batch (an exception drops the
        item, counted; it must leave ``batch`` as it was)."""
        batch.append(self.prepare(item))

    def take(self, batch: Any, queue: deque[Any], n: int) -> int:
        """Move the first ``n`` items of ``queue`` into the forming batch
        (:meth:`add_to_batch` each); an item that cannot be added is
        dropped and logged.  Returns how many were dropped (a subclass may
        build its items in one loop instead)."""
        add, popleft, bad = self.add_to_batch, queue.popleft, 0
        for _ in range(n):
            item = popleft()
            try:
                add(batch, item)
            except Exception:  # one bad item must not stop the shipping
                bad += 1
                log.failure("access log: an entry could not be built; dropped")
        return bad

    # -- internals -------------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _linger_over(self) -> None:
        self._timer = None
        if not self._inflight:
            self._next()
        self._settle()

    def _next(self) -> None:
        """Send the pending retry batch, or form a new batch from the queue."""
        if not self._batch:
            if not self._queue:
                self._wake_idle()
                return
            self._forming = min(self.max_batch, len(self._queue))
            self._batch = self.new_batch()
            self._attempt = 0
            self._inflight = True
            self._form()
            return
        self._inflight = True
        self._send()

    def _form(self) -> None:
        """Move up to ``form_slice`` queued items into the forming batch; send
        it when complete, else go on in the next reactor turn."""
        batch, queue = self._batch, self._queue
        n = min(self._forming, self.form_slice, len(queue))
        self._forming -= n
        bad = self.take(batch, queue, n)
        if bad:
            self.stats.dropped += bad
        if self._forming and queue:
            self._timer = self.clock.callLater(0, self._form_more, batch)
            return
        self._forming = 0
        if not len(batch):
            self._batch = []
            self._inflight = False
            self._next()
            return
        self._send()

    def _form_more(self, batch: Any) -> None:
        self._timer = None
        if batch is self._batch:  # else: given up (stop's timeout) meanwhile
            self._form()
        self._settle()

    def _send(self) -> None:
        batch = self._batch
        try:
            d = self._send_batch(batch) if self.batch_supported else self._send_each(batch)
        except Exception as exc:  # a broken client must not break the reactor
            d = Deferred()
            d.errback(exc)
        d.addCallbacks(self._done, self._failed)

    def batch_call(self, batch: Any) -> Deferred[Any]:
        """Start the batch RPC for ``batch`` (the client's
        ``send_access_log_batch``; a subclass may hand the client something
        cheaper to send)."""
        return self.client.send_access_log_batch(batch)

    def _send_batch(self, batch: Sequence[Any]) -> Deferred[list[Any]]:
        self.stats.batches += 1
        d = self.batch_call(batch)
        d.addTimeout(self.send_timeout, self.clock)

        def unimplemented(failure: Failure) -> Deferred[list[Any]] | Failure:
            if failure.check(errors.ManagementUnimplementedError):
                log.info("management has no NbgwSendAccessLogBatch; "
                         "sending access-log entries one by one")
                self.batch_supported = False
                return self._send_each(batch)
            return failure

        d.addCallbacks(lambda _: [], unimplemented)
        return d

    def _send_each(self, batch: Sequence[Any]) -> Deferred[list[Any]]:
        """One SendAccessLog per entry, ``fallback_inflight`` at a time; fires
        with the entries that failed (retryable), after counting permanent
        refusals as failed."""
        sem = DeferredSemaphore(self.fallback_inflight)
        self.stats.batches += 1

        def one(entry: Any) -> Deferred[Any]:
            d = self.client.send_access_log(entry)
            d.addTimeout(self.send_timeout, self.clock)
            return d

        calls = [sem.run(one, e) for e in batch]
        dl: Deferred[Any] = DeferredList(calls, consumeErrors=True)

        def collect(results: list[tuple[bool, Any]]) -> list[Any]:
            retry: list[Any] = []
            for entry, (ok, value) in zip(batch, results, strict=True):
                if ok:
                    self.stats.sent += 1
                elif value.check(*_PERMANENT):
                    self.stats.failed += 1
                else:
                    retry.append(entry)
            return retry

        return dl.addCallback(collect)

    def _done(self, retry: list[Any]) -> None:
        """A batch attempt finished; ``retry`` are entries still to send."""
        if not self.batch_supported:  # per-entry mode counted each success itself
            if retry:
                self._batch = retry
                self._retry_later(f"{len(retry)} SendAccessLog calls failed")
                self._settle()
                return
        else:  # a batch call succeeds or fails whole
            self.stats.sent += len(self._batch)
        self._batch = []
        self._inflight = False
        self._after()
        self._settle()

    def _failed(self, failure: Failure) -> None:
        if failure.check(*_PERMANENT):
            self.stats.failed += len(self._batch)
            log.warn("management refused {count} access-log entries: {err}",
                     count=len(self._batch), err=failure.getErrorMessage())
            self._batch = []
            self._inflight = False
            self._after()
            self._settle()
            return
        self._retry_later(failure.getErrorMessage())
        self._settle()

    def _retry_later(self, why: str) -> None:
        self._attempt += 1
        self._inflight = False
        if self._attempt >= self.max_attempts or (self._stopped and self._attempt >= 2):
            self.stats.dropped += len(self._batch)
            log.warn("dropping {count} access-log entries after {attempts} attempts: {err}",
                     count=len(self._batch), attempts=self._attempt, err=why)
            self._batch = []
            self._after()
            return
        self.stats.retries += 1
        delay = min(self.backoff_max, self.backoff_base * 2 ** (self._attempt - 1))
        log.debug("access-log batch failed ({err}); retry in {delay}s", err=why, delay=delay)
        self._cancel_timer()
        self._timer = self.clock.callLater(delay, self._linger_over)

    def _after(self) -> None:
        """Between batches: go on at once if a full batch (or shutdown) waits,
        else linger for more."""
        if not self._queue:
            self._wake_idle()
            return
        if len(self._queue) >= self.max_batch or self._stopped or self.linger <= 0:
            self._next()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.linger, self._linger_over)

    def _wake_idle(self) -> None:
        if self.pending or self._inflight:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for w in waiters:
            w.callback(None)
