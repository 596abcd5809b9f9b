"""Shared deadlines: one reactor timer for many short-lived deadlines.

:class:`Deadlines` replaces a ``callLater`` (and its cancellation, which
Twisted pays for in its timer heap) per proxied request (the reverse
proxy's request deadline) and per pooled upstream connection going idle
(:mod:`nbgateway.dial.http11`'s idle timeout).  Deadlines are kept
in one FIFO per delay: deadlines of the same delay are added in time
order, so each FIFO is sorted by construction and its head is its earliest
deadline.  A single ``DelayedCall`` is armed for the earliest head of all
FIFOs; when it fires, every expired deadline runs (in deadline order) and
the timer is armed again for the next live head, if any.  The FIFOs' heads
are found through a heap (one entry per FIFO holding deadlines, its due time
a lower bound of the FIFO's live head): a firing visits only the FIFOs due,
so its cost does not grow with the number of distinct delays pending (a
tenant chooses its targets' timeouts, at nanosecond precision).

Two ways to hold a deadline, on the same FIFOs and timer:

* :meth:`Deadlines.add_owner` (the reverse proxy's request deadline, one
  per request): the *owner* object is the FIFO entry.  Its ``due``
  attribute is set to the deadline; the owner cancels by setting
  ``owner.due = None`` (an attribute store: no call, no handle, no bound
  method per request), and at the deadline ``owner.deadline_expired()`` is
  called (``due`` is None by then).  The FIFO keeps each entry's deadline
  beside it (a second deque), and an entry is live while its owner's
  ``due`` is that very float object: an owner that cancelled and was added
  again has a new ``due``, so its stale entry reads as dead, never as a
  later deadline holding up the FIFO.
* :meth:`Deadlines.add` returns a :class:`Deadline` handle for ``fn``
  (idle sweeps, tests): an owner of its own whose :meth:`Deadline.cancel`
  (a call) also drops the dead entries from its FIFO's head at once and
  turns the timer off when nothing is pending and lingering is off.

Dead entries are dropped lazily: from a FIFO's head by the next
``add_owner`` of its delay (a request alone on the gateway drops its
predecessor's entry there), by the timer (which skips them) and by
compaction.  A FIFO is compacted (rebuilt with its live entries only) when
it reaches its limit, ``COMPACT_AT`` or twice its live entries at the last
compaction, whichever is more: that bounds memory by the live deadlines
(a slow request holding the head does not let the finished ones behind it
pile up) at amortised constant cost per add.  A dead entry keeps its owner
(a finished request's exchange) referenced until it is dropped: with
requests ending in order that is the next add of its delay, otherwise at
most the FIFO's limit of them, and none once the timer has passed them.

The timer lingers: a dead head is not a reason to cancel it, so a request
alone on the gateway (one connection) adds its deadline without a
``callLater``.  A timer that fires finds the dead entries, skips them, arms
itself for the earliest live head if there is one and otherwise stays off;
so at most one ``callLater`` per delay period while requests come one at a
time, and none left behind once the longest delay has passed after the
last request.  :meth:`Deadlines.disarm_idle` (closing pools) cancels the
timer at once when nothing is pending, :meth:`Deadlines.stop_lingering`
(shutdown) also makes the last ``Deadline.cancel`` cancel it.

Deadlines fire at their exact time (not rounded to a tick).  A deadline of
a delay whose FIFO's tail is later (the clock went backwards) is placed at
the tail's time.  The module is fed a clock (``seconds``/``callLater``),
``task.Clock`` in tests.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from operator import itemgetter
from typing import Any, Protocol

from twisted.logger import Logger

log = Logger()

#: a FIFO's least compaction limit (see the module docstring)
COMPACT_AT = 256
#: empty FIFOs (one per delay) kept when idle; more are dropped
MAX_IDLE_FIFOS = 16
#: the default of ``Deadlines(linger=...)``; ``NBGW_DEADLINE_LINGER=0`` in the
#: environment turns lingering off (for A/B benchmarks)
LINGER = os.environ.get("NBGW_DEADLINE_LINGER", "1") != "0"

_first = itemgetter(0)


class Owner(Protocol):
    """What :meth:`Deadlines.add_owner` needs of an owner."""

    #: the pending deadline (set by ``add_owner``); None: none (cancelled or fired)
    due: float | None

    def deadline_expired(self) -> None: ...


class Deadline:
    """One pending deadline for a function; :meth:`cancel` it when it is no
    longer needed."""

    __slots__ = ("due", "fifo", "fn")

    def __init__(self) -> None:
        self.due: float | None = None
        self.fn: Callable[[], Any] | None = None
        self.fifo: _Fifo | None = None

    def active(self) -> bool:
        return self.due is not None

    def deadline_expired(self) -> None:
        fn = self.fn
        self.fn = None
        self.fifo = None
        if fn is not None:
            fn()

    def cancel(self) -> None:
        if self.due is None:
            return
        self.due = None
        self.fn = None
        fifo = self.fifo
        if fifo is None:
            return
        self.fifo = None
        entries = fifo.entries
        if entries and entries[0] is self:
            dues = fifo.dues
            entries.popleft()
            dues.popleft()
            while entries and entries[0].due is not dues[0]:
                entries.popleft()
                dues.popleft()
        else:
            fifo.cancelled_behind()
        if not entries:
            fifo.dead = 0
            owner = fifo.owner
            if not owner.linger and not owner.pending():
                owner._disarm()


_new_deadline = Deadline.__new__


class _Fifo:
    __slots__ = ("dead", "delay", "dues", "entries", "heap_seq", "limit", "owner")

    def __init__(self, owner: Deadlines, delay: float = 0.0) -> None:
        #: the owners in deadline order, and beside each its deadline
        self.entries: deque[Any] = deque()
        self.dues: deque[float] = deque()
        #: entries known to be dead (Deadline handles cancelled behind the head)
        self.dead = 0
        #: compact when the FIFO reaches this length
        self.limit = COMPACT_AT
        self.owner = owner
        self.delay = delay
        #: the sequence number of this FIFO's entry in the owner's heap (None: none)
        self.heap_seq: int | None = None

    def cancelled_behind(self) -> None:
        """A handle behind the head was cancelled: count it, and compact the
        FIFO when most of it is known to be dead."""
        self.dead += 1
        if self.dead > COMPACT_AT and self.dead * 2 > len(self.entries):
            self.compact()

    def compact(self) -> None:
        """Rebuild the FIFO with its live entries only."""
        live = [(e, d) for e, d in zip(self.entries, self.dues, strict=True) if e.due is d]
        self.entries = deque(e for e, _ in live)
        self.dues = deque(d for _, d in live)
        self.dead = 0
        self.limit = max(COMPACT_AT, 2 * len(live))

    def drop_dead_heads(self) -> bool:
        """Drop the dead entries at the head; True if a live one is left."""
        entries, dues = self.entries, self.dues
        while entries:
            if entries[0].due is dues[0]:
                return True
            entries.popleft()
            dues.popleft()
        self.dead = 0
        return False


class Deadlines:
    """Deadlines of in-flight requests on one shared timer of ``clock``."""

    def __init__(self, clock: Any, *, linger: bool | None = None) -> None:
        self.clock = clock
        #: leave the timer armed when nothing is pending (see the module docstring)
        self.linger = LINGER if linger is None else linger
        self._fifos: dict[float, _Fifo] = {}
        #: (due, seq, fifo): each FIFO holding deadlines once, due <= its live head
        self._heads: list[tuple[float, int, _Fifo]] = []
        self._seq = 0
        self._call: Any = None
        self._armed_at = 0.0
        #: timer calls made (arming), for tests and benchmarks
        self.armed = 0

    def __len__(self) -> int:
        """The pending deadlines (a scan: for tests and diagnostics)."""
        return sum(1 for f in self._fifos.values()
                   for e, d in zip(f.entries, f.dues, strict=True) if e.due is d)

    def pending(self) -> bool:
        """Is any deadline pending?  (Drops the dead heads it passes.)"""
        found = False
        for fifo in self._fifos.values():
            if fifo.drop_dead_heads():
                found = True
        return found

    def _fifo(self, delay: float) -> _Fifo:
        fifo = self._fifos[delay] = _Fifo(self, delay)
        return fifo

    def add_owner(self, delay: float, owner: Owner, now: float | None = None) -> None:
        """Call ``owner.deadline_expired()`` ``delay`` seconds from now unless
        ``owner.due`` is set to None first (see the module docstring).
        ``now``: this clock's time when the caller just read it (None: read
        here)."""
        when = (self.clock.seconds() if now is None else now) + delay
        fifo = self._fifos.get(delay)
        if fifo is None:
            fifo = self._fifo(delay)
        entries = fifo.entries
        dues = fifo.dues
        if entries:
            # the dead heads (the previous request's, typically) go now
            while entries[0].due is not dues[0]:
                entries.popleft()
                dues.popleft()
                if not entries:
                    break
            else:
                if dues[-1] > when:
                    when = dues[-1]
                if len(entries) >= fifo.limit:
                    fifo.compact()
                    entries = fifo.entries
                    dues = fifo.dues
        owner.due = when
        entries.append(owner)
        dues.append(when)
        if fifo.heap_seq is None:  # else its heap entry is no later than this
            self._push(when, fifo)
        if self._call is None or when < self._armed_at:
            self._arm(when)

    def add(self, delay: float, fn: Callable[[], Any]) -> Deadline:
        """Call ``fn()`` ``delay`` seconds from now unless cancelled first."""
        entry = _new_deadline(Deadline)  # no __init__ call: every slot is set here
        entry.fn = fn
        entry.due = None
        self.add_owner(delay, entry)
        entry.fifo = self._fifos[delay]
        return entry

    def stop_lingering(self) -> None:
        """From now on cancel the timer when the last pending deadline goes
        through :meth:`Deadline.cancel`, and cancel the timer now if nothing is
        pending (shutdown)."""
        self.linger = False
        self.disarm_idle()

    def disarm_idle(self) -> None:
        """Cancel the timer now if nothing is pending (closing pools: nothing
        of this object is left in the reactor).  Pending deadlines are kept
        and still fire."""
        if not self.pending():
            self._disarm()

    def _disarm(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def lingering(self) -> bool:
        """The timer is armed while no deadline is pending."""
        return self._call is not None and not self.pending()

    def _arm(self, when: float) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._armed_at = when
        self.armed += 1
        self._call = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._fire)

    def _emptied(self, fifo: _Fifo) -> None:
        """``fifo`` holds no deadline (its heap entry is gone): forget it
        beyond the few kept idle."""
        fifo.dead = 0
        fifos = self._fifos
        if len(fifos) > MAX_IDLE_FIFOS and fifos.get(fifo.delay) is fifo:
            del fifos[fifo.delay]

    def _push(self, due: float, fifo: _Fifo) -> None:
        self._seq += 1
        fifo.heap_seq = self._seq
        heappush(self._heads, (due, self._seq, fifo))

    def _fire(self) -> None:
        self._call = None
        now = self.clock.seconds()
        expired: list[tuple[float, Any]] = []
        heads = self._heads
        while heads and heads[0][0] <= now:
            _due, seq, fifo = heappop(heads)
            if fifo.heap_seq != seq:
                continue  # a stale entry: the FIFO has a newer one, or none
            fifo.heap_seq = None
            entries, dues = fifo.entries, fifo.dues
            while entries:
                entry = entries[0]
                when = dues[0]
                if entry.due is when and when > now:
                    break
                entries.popleft()
                dues.popleft()
                if entry.due is when:
                    expired.append((when, entry))
            if entries:
                self._push(dues[0], fifo)
            else:
                self._emptied(fifo)
        if len(expired) > 1:  # several FIFOs' entries: deadline order (stable)
            expired.sort(key=_first)
        for when, entry in expired:
            if entry.due is not when:  # cancelled by an earlier deadline's function
                continue
            entry.due = None
            try:
                entry.deadline_expired()
            except Exception:
                log.failure("a request deadline's function failed")
        self._arm_next()

    def _arm_next(self) -> None:
        """Arm the timer for the earliest live head unless it is armed earlier."""
        heads = self._heads
        while heads:
            due, seq, fifo = heads[0]
            if fifo.heap_seq != seq or not fifo.drop_dead_heads():
                heappop(heads)
                if fifo.heap_seq == seq:  # emptied by cancellations: no entry now
                    fifo.heap_seq = None
                    self._emptied(fifo)
                continue
            first = fifo.dues[0]
            if first != due:  # its head moved on: the entry says so now
                heappop(heads)
                self._push(first, fifo)
                continue
            if self._call is None or first < self._armed_at:
                self._arm(first)
            return
