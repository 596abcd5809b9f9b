"""The management's GC policy: freeze the long-lived heap after a slow full collection.

:class:`HeapFreezer` owns when the management process calls ``gc.freeze()``.

Why (issue 18, mapping-change tail): the management keeps a large long-lived
heap once gateways are connected (the diff state of every service, the
per-account network map memo, the change log, ORM rows); at 300 accounts a
generation-2 collection took ~350 ms with nothing frozen (bench/scale.py
``--trace``), holding the GIL: the REST handler, the mapping dispatcher, the
gRPC loop and the status writer all stop, and a mapping change caught in it
took 436 ms instead of the usual ~40 ms.  Unlike the gateway (whose heap is
built at start-up, see ``nbgateway.tap.HeapFreezer``), the management's heap
grows when gateways connect, at any time, so fixed freeze times would miss it.

Policy:

* ``gc.freeze()`` at each of ``delays`` after start (the start-up heap:
  modules, the store, the REST tree);
* after any full (generation-2) collection that took at least ``slow``
  seconds, ``gc.freeze()`` once more (through ``callFromThread``: the
  collection may run in any thread; the survivors of that collection are
  what is frozen), at most once per ``min_interval`` seconds.  Later full
  collections then walk only what was allocated since, which is small.

The cost is the gateway's: frozen objects are never collected by the cyclic
GC, so a reference cycle among them that dies later leaks (objects freed by
reference counting are freed as usual).  Bounded: a freeze happens only after
a slow collection, i.e. after the unfrozen heap grew large again.  twistd only
(the plugin's ``makeService``); a library host keeps its own GC policy.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()

#: seconds after start of the fixed freezes (the start-up heap)
FREEZE_AFTER = (10.0,)
#: a full collection at least this long (s) triggers a freeze of its survivors
SLOW_COLLECTION = 0.05
#: adaptive freezes at most once per this many seconds
MIN_INTERVAL = 30.0


class HeapFreezer(Service):
    """See the module docstring."""

    def __init__(self, reactor: Any, *, delays: tuple[float, ...] = FREEZE_AFTER,
                 slow: float = SLOW_COLLECTION, min_interval: float = MIN_INTERVAL,
                 freeze: Callable[[], Any] = gc.freeze,
                 callbacks: list[Any] | None = None,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.reactor = reactor
        self.delays = delays
        self.slow = slow
        self.min_interval = min_interval
        self._freeze = freeze
        self._callbacks = gc.callbacks if callbacks is None else callbacks
        self._timer = timer
        self._calls: list[Any] = []
        self._started_at: float | None = None
        self._scheduled = False
        self._last_freeze: float | None = None
        #: freezes done; full collections seen and the slowest (s) (counters)
        self.freezes = 0
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
        self._scheduled = False
        self._freeze()
        self.freezes += 1
        self._last_freeze = self._timer()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """``gc.callbacks`` hook (any thread, the GIL held): time full collections."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started_at = self._timer()
            return
        if self._started_at is None:
            return
        now = self._timer()
        took, self._started_at = now - self._started_at, None
        self.full_collections += 1
        self.slowest = max(self.slowest, took)
        if took < self.slow or self._scheduled:
            return
        if self._last_freeze is not None and now - self._last_freeze < self.min_interval:
            return
        self._scheduled = True
        log.debug("full GC took {ms:.0f} ms: freezing its survivors", ms=took * 1000)
        self.reactor.callFromThread(self.freeze_now)
