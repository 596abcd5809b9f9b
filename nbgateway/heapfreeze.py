"""Process GC policy of both twistd programs: freeze the long-lived heap.

:class:`HeapFreezer` owns when ``gc.freeze()`` is called in ``twistd nbgateway``
and ``twistd nbmanagement`` (their ``makeService``; a library host keeps its
own GC policy).

Why: a full (generation-2) collection walks every tracked object while holding
the GIL.  The gateway's start-up heap (modules, the management client, each
account's device and stack: ~70,000 objects) made one take 60-200 ms on the
shared 2-core box, every few seconds under request load: the reactor stalled,
a peer's kernel sent tail-loss probes after ~200 ms without an ACK and the p99
latency was that pause (issue 20).  The management's heap grows when gateways
connect (the diff state of every service, the network-map memo, ORM rows): at
300 accounts a full collection took ~350 ms and stopped the REST handler, the
mapping dispatcher, the gRPC loop and the status writer together (issue 18,
the mapping-change tail).

Policy:

* ``gc.freeze()`` at each of ``delays`` after start; the first one is
  preceded by ``collect()`` when one is given (so garbage is not frozen; a
  full collection is itself the pause avoided here, so only the first, normally
  before any traffic, pays it);
* after a full collection that took at least ``slow`` s, ``gc.freeze()`` its
  survivors (through ``callFromThread``: collections run in any thread), at
  most once per ``min_interval`` s and at most ``max_adaptive`` times in the
  process's life; when ``delays`` is not empty only after the first fixed
  freeze (that one collects and freezes anyway).

The cost: frozen objects are never examined by the cyclic collector, so a
reference cycle among them that dies later is leaked (objects freed by
reference counting are freed as usual).  ``max_adaptive`` bounds that: at
most the heaps alive at ``len(delays) + max_adaptive`` moments.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()

#: gateway: seconds after start at which the long-lived heap is frozen
#: (accounts are normally up by the first; the second catches a slow first sync)
HEAP_FREEZE_AFTER = (10.0, 60.0)
#: a full collection at least this long (s) freezes its survivors
HEAP_FREEZE_SLOW = 0.05
#: adaptive freezes at most once per this many seconds ...
HEAP_FREEZE_MIN_INTERVAL = 30.0
#: ... and at most this many times per process (bounds what cycles can leak)
HEAP_FREEZE_MAX_ADAPTIVE = 8


class HeapFreezer(Service):
    """See the module docstring.  ``clock``/``timer`` are injected for tests."""

    def __init__(self, reactor: Any, delays: tuple[float, ...] = HEAP_FREEZE_AFTER,
                 collect: Callable[[], Any] | None = gc.collect,
                 freeze: Callable[[], Any] = gc.freeze, *,
                 slow: float = HEAP_FREEZE_SLOW,
                 min_interval: float = HEAP_FREEZE_MIN_INTERVAL,
                 max_adaptive: int = HEAP_FREEZE_MAX_ADAPTIVE,
                 callbacks: list[Any] | None = None,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.reactor = reactor
        self.delays = delays
        self._collect = collect
        self._freeze = freeze
        self.slow = slow
        self.min_interval = min_interval
        self.max_adaptive = max_adaptive
        self._callbacks = gc.callbacks if callbacks is None else callbacks
        self._timer = timer
        self._calls: list[Any] = []
        self._gc_started: float | None = None
        self._scheduled = False
        self._last_freeze: float | None = None
        #: counters: freezes done (fixed and adaptive), adaptive ones, full
        #: collections seen and the slowest (s)
        self.freezes = 0
        self.adaptive_freezes = 0
        self.full_collections = 0
        self.slowest = 0.0

    def startService(self) -> None:
        super().startService()
        self._calls = [self.reactor.callLater(d, self.freeze_now) for d in self.delays]
        self._callbacks.append(self._on_gc)

    def stopService(self) -> Any:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        if self._on_gc in self._callbacks:
            self._callbacks.remove(self._on_gc)
        return super().stopService()

    def freeze_now(self) -> None:
        """A fixed freeze (the first collects first, when ``collect`` is set)."""
        if not self.freezes and self._collect is not None:
            self._collect()
        self._freeze()
        self.freezes += 1
        self._last_freeze = self._timer()

    def _freeze_survivors(self) -> None:
        self._scheduled = False
        self._freeze()  # the collection that triggered this just ran: no collect
        self.freezes += 1
        self.adaptive_freezes += 1
        self._last_freeze = self._timer()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """``gc.callbacks`` hook (any thread, the GIL held): time full collections."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = self._timer()
            return
        if self._gc_started is None:
            return
        now = self._timer()
        took, self._gc_started = now - self._gc_started, None
        self.full_collections += 1
        self.slowest = max(self.slowest, took)
        if took < self.slow or self._scheduled or self.adaptive_freezes >= self.max_adaptive:
            return
        if self.delays and not self.freezes:
            return  # the first fixed freeze collects and freezes anyway
        if self._last_freeze is not None and now - self._last_freeze < self.min_interval:
            return
        self._scheduled = True
        log.debug("full GC took {ms:.0f} ms: freezing its survivors", ms=took * 1000)
        self.reactor.callFromThread(self._freeze_survivors)
