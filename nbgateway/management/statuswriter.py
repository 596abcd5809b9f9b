"""Group commit of ``SendStatusUpdate``: reports arriving together share one transaction.

A gateway bringing up many services reports each one (10,000 ACTIVE reports
when a 1,000-account gateway starts); one write transaction per report made
SQLite's ``BEGIN`` and the status write the management's largest costs.
:class:`StatusWriter` owns the queue between the RPC handlers and the store:

* :meth:`StatusWriter.submit` queues a validated
  :class:`~nbgateway.management.store._statusreports.StatusReport` and
  returns a :class:`concurrent.futures.Future` that completes once the batch
  holding it has **committed** (result ``None``) or with the exception its RPC
  must fail with: that report's own (``NotFound``, a bad CA) or the batch's
  (store unavailable: every report of a failed batch fails, none is lost
  silently);
* one writer thread takes everything queued (at most ``max_batch``) after
  lingering ``linger`` seconds for more, and hands it to ``apply`` (the
  store's ``services.apply_status_reports``: one transaction, latest report
  per service wins, unchanged statuses not written).  Batches are applied one
  at a time in arrival order, so a service's later report is never
  overwritten by an earlier one;
* the queue is bounded (``max_queue``): beyond it ``submit`` fails at once
  with :class:`StatusQueueFull` (the RPC answers ``UNAVAILABLE``; gateways
  retry);
* before :meth:`start`, ``submit`` applies the report in the calling thread
  (a batch of one), so a servicer used without its lifecycle (tests) still
  stores what it is sent; after :meth:`stop` (the management is shutting
  down) it refuses with :class:`StatusWriterStopped` (``UNAVAILABLE``: the
  gateway retries) rather than block the gRPC loop with a write.

The RPC handler awaits the future on the gRPC loop
(:mod:`~nbgateway.management.proxyservice`), so a waiting report holds no
pool thread.  The wire contract is unchanged: a stock caller's
``SendStatusUpdate`` is answered OK after its status is stored.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

from twisted.logger import Logger

from nbgateway.management.errors import StoreUnavailable

log = Logger()

#: reports written in one transaction at most
MAX_BATCH = 1000
#: reports waiting at most (beyond: UNAVAILABLE)
MAX_QUEUE = 20000
#: how long the writer waits for more reports after the first of a batch
LINGER = 0.003

Apply = Callable[[Sequence[Any]], list[Exception | None]]


class StatusQueueFull(StoreUnavailable):
    """Too many status reports waiting (``UNAVAILABLE``)."""


class StatusWriterStopped(StoreUnavailable):
    """The management is shutting down (``UNAVAILABLE``)."""


class StatusWriter:
    """See the module docstring."""

    def __init__(self, apply: Apply, *, max_batch: int = MAX_BATCH,
                 max_queue: int = MAX_QUEUE, linger: float = LINGER,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self._apply = apply
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.linger = linger
        self._sleep = sleep
        self._lock = threading.Lock()
        self._queue: deque[tuple[Any, futures.Future[None]]] = deque()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        #: batches written, reports written, reports refused as overflow (counters)
        self.batches = 0
        self.reports = 0
        self.refused = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="nbmanagement-status-writer",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread (later reports are written inline)."""
        with self._lock:  # from here on submit refuses
            thread, self._thread = self._thread, None
            self._stopped = thread is not None or self._stopped
        if thread is None:
            return
        self._stopping.set()
        self._wakeup.set()
        thread.join(timeout)
        self._drain_all()  # anything queued while stopping

    @property
    def running(self) -> bool:
        return self._thread is not None

    # -- queueing ----------------------------------------------------------------------------

    def submit(self, report: Any) -> futures.Future[None]:
        """Queue ``report``; the future completes once it is committed (or failed)."""
        fut: futures.Future[None] = futures.Future()
        with self._lock:
            if self._stopped:
                fut.set_exception(StatusWriterStopped("management shutting down"))
                return fut
            queued = self._thread is not None
            if queued and len(self._queue) >= self.max_queue:
                self.refused += 1
                fut.set_exception(StatusQueueFull("too many status reports waiting"))
                return fut
            if queued:
                self._queue.append((report, fut))
        if queued:
            self._wakeup.set()
        else:
            self._write([(report, fut)])
        return fut

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # -- the writer thread -------------------------------------------------------------------

    def _take(self) -> list[tuple[Any, futures.Future[None]]]:
        with self._lock:
            n = min(len(self._queue), self.max_batch)
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.wait(1.0)
            self._wakeup.clear()
            if not self.pending():
                continue
            if self.linger > 0 and not self._stopping.is_set():
                self._sleep(self.linger)
            try:
                self._drain_all()
            except Exception:  # never lose the writer thread
                log.failure("status writer")
        self._drain_all()

    def _drain_all(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self._write(batch)

    def _write(self, batch: list[tuple[Any, futures.Future[None]]]) -> None:
        # a report whose caller went away (its RPC cancelled: deadline) is still
        # written -- it is the gateway's latest word -- but gets no answer
        live = [fut.set_running_or_notify_cancel() for _, fut in batch]
        try:
            results = self._apply([r for r, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError("status batch: one result per report expected")
        except Exception as exc:
            log.warn("status batch of {n} reports failed: {error}", n=len(batch),
                     error=type(exc).__name__)
            for (_, fut), ok in zip(batch, live, strict=True):
                if ok:
                    fut.set_exception(exc)
            return
        self.batches += 1
        self.reports += len(batch)
        for (_, fut), ok, error in zip(batch, live, results, strict=True):
            if not ok:
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)
