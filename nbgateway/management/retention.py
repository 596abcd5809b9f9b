"""Access-log retention: the background pruner of ``access_log_entries``.

Owns the policy (entries older than ``max_age`` go; each account keeps at most
``max_rows`` entries, the newest) and its schedule: a
:class:`~twisted.internet.task.LoopingCall` on the injected clock runs a pass
every ``interval`` seconds.  A pass walks the accounts and deletes in small
steps (``store.access_logs.prune_step``, at most ``step`` rows per
transaction), each step a separate job on the store thread pool, so writers
queue behind one short transaction at most, never behind a whole pass.  Only
one pass runs at a time; a failing pass is logged and the next one tries
again.

Configured by ``--access-log-max-age`` / ``NB_MANAGEMENT_ACCESS_LOG_MAX_AGE``
(default 30d; ``0`` keeps entries forever) and ``--access-log-max-rows`` /
``NB_MANAGEMENT_ACCESS_LOG_MAX_ROWS`` (default 1,000,000 per account; ``0``
means no row limit).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from nbgateway.management.model import utcnow

log = Logger()

DEFAULT_MAX_AGE = "30d"
DEFAULT_MAX_ROWS = 1_000_000
#: seconds between passes
DEFAULT_INTERVAL = 300.0
#: most rows deleted in one transaction
DEFAULT_STEP = 1000

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def parse_max_age(text: str) -> timedelta | None:
    """``30d``, ``12h``, ``90m``, ``3600s``/``3600``, ``2w``; ``0`` = keep forever
    (None).  ValueError for anything else."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"invalid duration {text!r}: expected a number with s, m, h, d or w")
    seconds = int(m.group(1)) * _UNITS[m.group(2) or "s"]
    return timedelta(seconds=seconds) if seconds else None


def parse_max_rows(text: str) -> int | None:
    """A non-negative row count (``_`` separators allowed); ``0`` = no limit (None)."""
    try:
        n = int(str(text).replace("_", ""))
    except ValueError:
        raise ValueError(f"invalid row count {text!r}") from None
    if n < 0:
        raise ValueError(f"invalid row count {text!r}: must not be negative")
    return n or None


class AccessLogRetention(Service):
    """Background pruning of the access log (see module docstring)."""

    name = "access-log-retention"

    def __init__(
        self,
        store_getter: Callable[[], Any],
        threadpool: Any,
        clock: Any,
        *,
        max_age: timedelta | None,
        max_rows: int | None,
        interval: float = DEFAULT_INTERVAL,
        step: int = DEFAULT_STEP,
        now: Callable[[], Any] = utcnow,
    ) -> None:
        self._store_getter = store_getter
        self._threadpool = threadpool
        self._clock = clock
        self.max_age = max_age
        self.max_rows = max_rows
        self.interval = interval
        self.step = step
        self._now = now
        self._loop: LoopingCall | None = None
        self._running: Deferred[Any] | None = None
        self._stopping = False
        #: rows deleted since start, and passes completed
        self.deleted = 0
        self.passes = 0

    @property
    def enabled(self) -> bool:
        return self.max_age is not None or self.max_rows is not None

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        if not self.enabled:
            log.info("access-log retention off (no maximum age or row count)")
            return
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self._running  # an unfinished pass stops after its current step

    def _tick(self) -> None:
        if self._running is not None:
            return  # the previous pass is still going
        d = self.run_pass()
        self._running = d

        def done(_: Any) -> None:
            self._running = None

        d.addErrback(lambda f: log.failure("access-log retention pass failed", f))
        d.addBoth(done)

    def _in_pool(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        return deferToThreadPool(self._clock, self._threadpool, fn, *args, **kw)

    @inlineCallbacks
    def run_pass(self) -> Any:
        """One pass over every account; fires with the rows deleted."""
        store = self._store_getter()
        if store is None:
            return 0
        older_than = self._now() - self.max_age if self.max_age is not None else None
        deleted = 0
        account_ids = yield self._in_pool(store.access_logs.account_ids)
        for account_id in account_ids:
            while not self._stopping:
                n = yield self._in_pool(
                    store.access_logs.prune_step, account_id, older_than=older_than,
                    max_rows=self.max_rows, limit=self.step,
                )
                deleted += n
                if n < self.step:
                    break
        self.deleted += deleted
        self.passes += 1
        if deleted:
            log.info("access-log retention deleted {count} entries", count=deleted)
        return deleted
