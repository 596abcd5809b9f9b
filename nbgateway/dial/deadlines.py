"""Shared deadlines: one reactor timer for many short-lived deadlines.

:class:`Deadlines` replaces a ``callLater`` (and its cancellation, which
Twisted pays for in its timer heap) per proxied request (the reverse
proxy's request deadline) and per pooled upstream connection going idle
(:mod:`nbgateway.dial.http11`'s idle timeout).  Deadlines are kept
in one FIFO per delay: requests of the same target timeout are added in time
order, so each FIFO is sorted by construction and its head is its earliest
deadline.  A single ``DelayedCall`` is armed for the earliest head of all
FIFOs; when it fires, every expired deadline runs (in deadline order per
FIFO) and the timer is armed again for the next head, if any.

Cancelling marks the entry dead and drops dead entries from its FIFO's head
at once, so a FIFO holds at most the dead entries behind its oldest live
one; a FIFO whose dead entries outnumber its live ones (and more than
``COMPACT_AT``) is rebuilt without them, which bounds memory by the live
requests.

When the last pending deadline is cancelled the FIFOs are emptied but the
timer is left armed ("lingering"): the next deadline, later than the armed
time, needs no timer call, so a request alone on the gateway (one
connection) adds and cancels its deadline without a ``callLater`` and a
``cancel`` each.  A lingering timer that fires finds nothing due, arms
itself for the earliest pending deadline if there is one, and otherwise
stays off; so at most one ``callLater`` per delay period while requests
come one at a time, and none left behind once the longest delay has passed
after the last request.  :meth:`Deadlines.disarm_idle` (closing pools)
cancels a lingering timer at once, :meth:`Deadlines.stop_lingering`
(shutdown) also turns lingering off.

Deadlines fire at their exact time (not rounded to a tick).  A deadline of
a delay whose FIFO's tail is later (the clock went backwards) is placed at
the tail's time.  The module is fed a clock (``seconds``/``callLater``),
``task.Clock`` in tests.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

log = Logger()

#: rebuild a FIFO without its dead entries past this many (and past half)
COMPACT_AT = 256
#: empty FIFOs (one per delay) kept when idle; more are dropped
MAX_IDLE_FIFOS = 16
#: the default of ``Deadlines(linger=...)``; ``NBGW_DEADLINE_LINGER=0`` in the
#: environment turns lingering off (for A/B benchmarks)
LINGER = os.environ.get("NBGW_DEADLINE_LINGER", "1") != "0"


class Deadline:
    """One pending deadline; :meth:`cancel` it when the request no longer needs it."""

    __slots__ = ("fifo", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], Any], fifo: _Fifo) -> None:
        self.when = when
        self.fn: Callable[[], Any] | None = fn
        self.fifo: _Fifo | None = fifo

    def active(self) -> bool:
        return self.fn is not None

    def cancel(self) -> None:
        if self.fn is None:
            return
        self.fn = None
        fifo = self.fifo
        if fifo is None:  # already taken out by a firing timer
            return
        # _Fifo.cancelled's common cases inline (one call less per request)
        owner = fifo.owner
        owner.live -= 1
        if owner.live == 0:
            # owner.idle(), inline: nothing pending (every request of a
            # connection alone on the gateway ends here)
            fifos = owner._fifos
            if len(fifos) == 1:  # this entry's FIFO alone (one request timeout)
                fifo.entries.clear()
                fifo.dead = 0
            elif len(fifos) > MAX_IDLE_FIFOS:
                fifos.clear()
            else:
                for each in fifos.values():
                    each.entries.clear()
                    each.dead = 0
            if not owner.linger:
                owner._disarm()
            return
        entries = fifo.entries
        if entries[0] is self:
            entries.popleft()
            while entries and entries[0].fn is None:
                entries.popleft()
                fifo.dead -= 1
        else:
            fifo.cancelled_behind()


_new_deadline = Deadline.__new__


class _Fifo:
    __slots__ = ("dead", "entries", "owner")

    def __init__(self, owner: Deadlines) -> None:
        self.entries: deque[Deadline] = deque()
        self.dead = 0
        self.owner = owner

    def cancelled_behind(self) -> None:
        """An entry behind the head was cancelled (see ``Deadline.cancel``):
        count it, and compact the FIFO when most of it is dead."""
        self.dead += 1
        entries = self.entries
        if self.dead > COMPACT_AT and self.dead * 2 > len(entries):
            self.entries = deque(e for e in entries if e.fn is not None)
            self.dead = 0


class Deadlines:
    """Deadlines of in-flight requests on one shared timer of ``clock``."""

    def __init__(self, clock: Any, *, linger: bool | None = None) -> None:
        self.clock = clock
        #: leave the timer armed when nothing is pending (see the module docstring)
        self.linger = LINGER if linger is None else linger
        self._fifos: dict[float, _Fifo] = {}
        self._call: Any = None
        self._armed_at = 0.0
        #: deadlines added and neither fired nor cancelled
        self.live = 0
        #: timer calls made (arming), for tests and benchmarks
        self.armed = 0

    def __len__(self) -> int:
        return self.live

    def add(self, delay: float, fn: Callable[[], Any]) -> Deadline:
        """Call ``fn()`` ``delay`` seconds from now unless cancelled first."""
        when = self.clock.seconds() + delay
        fifo = self._fifos.get(delay)
        if fifo is None:
            fifo = self._fifos[delay] = _Fifo(self)
        entries = fifo.entries
        if entries and entries[-1].when > when:
            when = entries[-1].when
        entry = _new_deadline(Deadline)  # Deadline(when, fn, fifo) without the __init__ call
        entry.when = when
        entry.fn = fn
        entry.fifo = fifo
        entries.append(entry)
        self.live += 1
        if self._call is None or when < self._armed_at:
            self._arm(when)
        return entry

    def idle(self) -> None:
        """No deadline is pending: empty the FIFOs (kept for reuse while there
        are few delays).  The timer stays armed while lingering (see the
        module docstring), else it is cancelled.  (``Deadline.cancel`` does
        the same inline: keep both in step.)"""
        if len(self._fifos) > MAX_IDLE_FIFOS:
            self._fifos.clear()
        else:
            for fifo in self._fifos.values():
                fifo.entries.clear()
                fifo.dead = 0
        if not self.linger:
            self._disarm()

    def stop_lingering(self) -> None:
        """From now on cancel the timer when the last pending deadline goes
        (no lingering), and cancel a lingering one now (shutdown)."""
        self.linger = False
        self.disarm_idle()

    def disarm_idle(self) -> None:
        """Cancel a lingering timer now (closing pools: nothing of this object
        is left in the reactor while nothing is pending).  Pending deadlines
        are kept and still fire."""
        if self.live == 0:
            self._disarm()

    def _disarm(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def lingering(self) -> bool:
        """The timer is armed while no deadline is pending."""
        return self.live == 0 and self._call is not None

    def _arm(self, when: float) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._armed_at = when
        self.armed += 1
        self._call = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        now = self.clock.seconds()
        expired: list[Deadline] = []
        for delay, fifo in list(self._fifos.items()):
            entries = fifo.entries
            while entries and entries[0].when <= now:
                entry = entries.popleft()
                if entry.fn is None:
                    fifo.dead -= 1
                else:
                    entry.fifo = None
                    expired.append(entry)
            if not entries and len(self._fifos) > MAX_IDLE_FIFOS:
                del self._fifos[delay]
        self.live -= len(expired)
        if len(expired) > 1:  # several FIFOs' entries: deadline order (stable)
            expired.sort(key=lambda e: e.when)
        for entry in expired:
            fn = entry.fn
            if fn is None:  # cancelled by an earlier deadline's function
                continue
            entry.fn = None
            try:
                fn()
            except Exception:
                log.failure("a request deadline's function failed")
        self._arm_next()

    def _arm_next(self) -> None:
        """Arm the timer for the earliest head unless it is armed earlier."""
        heads = [f.entries[0].when for f in self._fifos.values() if f.entries]
        if heads:
            first = min(heads)
            if self._call is None or first < self._armed_at:
                self._arm(first)
